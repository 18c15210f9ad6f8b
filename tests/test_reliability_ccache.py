"""The compiled-kernel cache heals itself: a truncated, foreign, stale or incomplete entry is a cache miss,
compiled again and replaced atomically, and processes that compile at the same time agree.

Each case uses its own C source, so its entry's path was never loaded in this process (the dynamic
loader would hand back a library it already holds under that path)."""

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tessera.kernels.ngemm import ccache

pytestmark = pytest.mark.skipif(ccache.compiler() is None, reason="no C compiler")

CCACHE_PY = Path(ccache.__file__)


def _src(tag: str, value: int = 42) -> str:
    return f"/* {tag} */\nint tq_answer(void) {{ return {value}; }}\nstatic int helper(int x) {{ return x; }}\n"


def _foreign_build(tmp_path: Path, source: str) -> bytes:
    """The bytes of a valid library built for another source (in another cache directory)."""
    other = tmp_path / "other"
    os.environ["TESSERA_KERNEL_CACHE"] = str(other)
    try:
        ccache.build(source, (), "foreign")
    finally:
        os.environ["TESSERA_KERNEL_CACHE"] = str(tmp_path)
    return next(other.glob("foreign-*.so")).read_bytes()


def _put(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)  # a new file, as a damaged download or copy would be (never the mapped one)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "stale-stamp", "missing-symbol"])
def test_bad_entry_is_a_miss_rebuilt_and_replaced(damage, tmp_path, monkeypatch):
    monkeypatch.setenv("TESSERA_KERNEL_CACHE", str(tmp_path))
    src = _src(f"heal-{damage}")
    path, key = ccache.entry_path(src, (), "heal")
    if damage == "truncated":
        good = _foreign_build(tmp_path, src)  # same source, other directory: the right bytes, then cut
        _put(path, good[: len(good) // 2])
    elif damage == "garbage":
        _put(path, os.urandom(4096))
    elif damage == "empty":
        _put(path, b"")
    elif damage == "stale-stamp":  # a valid library of another build (returns 43) under this entry's name
        _put(path, _foreign_build(tmp_path, _src(f"heal-{damage}", 43)))
    else:  # the right stamp, but the function the source defines is not in it
        cc = ccache.compiler()
        fake = f'const char {ccache.STAMP_SYMBOL}[] = "tessera-kernel-stamp:{key}";\nint tq_other(void) {{ return 1; }}\n'
        ccache._compile(cc, ccache.BASE_FLAGS, fake, "fake", path)
    why = ccache.entry_problem(path, key, ["tq_answer"])
    assert why is not None  # the check sees the damage before anything loads the file
    with pytest.warns(UserWarning, match="unusable"):
        lib = ccache.build(src, (), "heal")
    assert lib.tq_answer() == 42  # the rebuilt entry, not the stale one (43) or a crash
    assert ccache.entry_problem(path, key, ["tq_answer"]) is None
    assert [p.name for p in tmp_path.glob("heal-*")] == [path.name]  # replaced in place, no temporaries left


def test_entry_checks_name_what_is_wrong(tmp_path, monkeypatch):
    monkeypatch.setenv("TESSERA_KERNEL_CACHE", str(tmp_path))
    src = _src("names")
    ccache.build(src, (), "names")
    path, key = ccache.entry_path(src, (), "names")
    assert ccache.entry_problem(path, key, ["tq_answer"]) is None
    assert "lacks the symbols ['tq_missing']" in ccache.entry_problem(path, key, ["tq_answer", "tq_missing"])
    assert "version stamp" in ccache.entry_problem(path, "0" * 20, ["tq_answer"])
    assert ccache.exported_functions(src + "int proto(int);\nvoid tq_two(int a,\n  int b)\n{\n}\n") == [
        "tq_answer", "tq_two"]  # static helpers and prototypes are not exported definitions


_CHILD = """
import importlib.util, sys
spec = importlib.util.spec_from_file_location("ccache", sys.argv[1])
m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)
print(m.build(open(sys.argv[2]).read(), (), "race").tq_answer())
"""


@pytest.mark.parametrize("start", ["empty", "damaged"])
def test_two_processes_compiling_at_once_agree(start, tmp_path):
    """Two processes build the same entry at the same moment, from an empty cache and from a damaged entry
    (both see the damage and both replace it): both load a valid library, one entry remains."""
    cache = tmp_path / "cache"
    src = _src(f"race-{start}")
    (tmp_path / "src.c").write_text(src)
    env = dict(os.environ, TESSERA_KERNEL_CACHE=str(cache))
    if start == "damaged":
        os.environ["TESSERA_KERNEL_CACHE"] = str(cache)
        try:
            path, _ = ccache.entry_path(src, (), "race")
        finally:
            os.environ.pop("TESSERA_KERNEL_CACHE")
        _put(path, b"\x7fELF" + b"\0" * 100)
    cmd = [sys.executable, "-c", _CHILD, str(CCACHE_PY), str(tmp_path / "src.c")]

    def run(_):
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)

    with ThreadPoolExecutor(2) as ex:
        results = list(ex.map(run, range(2)))
    for r in results:
        assert r.returncode == 0, r.stderr[-2000:]
        assert r.stdout.strip() == "42"
    assert len(list(cache.glob("race-*.so"))) == 1
    assert not [p for p in cache.iterdir() if not p.name.endswith(".so")]  # temporary dirs removed
