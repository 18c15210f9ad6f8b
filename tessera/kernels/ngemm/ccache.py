"""Compile generated C once with the system compiler, cache the shared library, load it via ctypes.

Why ctypes on a cached `.so` rather than a setuptools/torch C++ extension: the kernels are *generated*
from a schedule at run time (NGEMM's "compiler-based" idea, arXiv 1910.00178), so they cannot be
built at install time without fixing the schedule; a C ABI with raw pointers needs no Python headers,
no pybind11 and no torch ABI match, and gcc's start-up (~0.3 s per variant) is paid once per machine.

The cache key hashes source + flags + `cc --version`, so a changed generator, flag set or compiler
never reuses a stale binary. The directory is `$TESSERA_KERNEL_CACHE` or ~/.cache/tessera/kernels.
Flags are explicit per ISA (`-mavx512vnni` ...): never `-march=native`, so a cached artifact does
not silently embed instructions of the machine that happened to build it.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

BASE_FLAGS = (
    "-O3", "-fPIC", "-shared", "-std=gnu11", "-fopenmp",
    # Bit-exact agreement with the torch fallback needs separate mul and add (no FMA contraction).
    "-ffp-contract=off", "-fno-math-errno",
)


class CompileError(RuntimeError):
    pass


def cache_dir() -> Path:
    d = os.environ.get("TESSERA_KERNEL_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "tessera", "kernels")
    return Path(d)


@functools.cache
def compiler() -> tuple[str, str] | None:
    """(path, version banner) of `$CC` or gcc/cc, or None when no C compiler works."""
    for name in filter(None, (os.environ.get("CC"), "gcc", "cc")):
        path = shutil.which(name)
        if not path:
            continue
        try:
            out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30, check=False)
        except (OSError, subprocess.SubprocessError):
            continue
        if out.returncode == 0:
            return path, out.stdout.strip()
    return None


def build(source: str, flags: tuple[str, ...], name: str) -> ctypes.CDLL:
    """Return the loaded library for `source`, compiling it only on a cache miss."""
    cc = compiler()
    if cc is None:
        raise CompileError("no C compiler found (set CC or install gcc)")
    all_flags = (*BASE_FLAGS, *flags)
    key = hashlib.sha256("\0".join((source, " ".join(all_flags), cc[1])).encode()).hexdigest()[:20]
    target = cache_dir() / f"{name}-{key}.so"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            src = Path(tmp) / f"{name}.c"
            src.write_text(source)
            out = Path(tmp) / "lib.so"
            res = subprocess.run([cc[0], *all_flags, str(src), "-o", str(out)], capture_output=True, text=True,
                                 check=False)
            if res.returncode != 0:
                raise CompileError(f"{cc[0]} failed for {name}:\n{res.stderr[-4000:]}")
            os.replace(out, target)  # atomic: concurrent builders never load a half-written file
    return ctypes.CDLL(str(target))
