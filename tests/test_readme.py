"""The README runs as written, and what the documents cite exists.

- Every ```python block of README.md runs on its own in a fresh interpreter (working directory: the
  repository root; this checkout's `tessera` first on the path; no network), within
  `TESSERA_README_TIMEOUT_S` seconds (default 120), one torch thread each unless `OMP_NUM_THREADS` says
  otherwise (a shared CPU slows multi-threaded torch down many times). The blocks keep their sizes small
  for that (10-step problems, a 4K-word haystack, 256 tokens through transformers).
- Every relative markdown link `[x](path)` and every backticked result path (`benchmarks/results/...`,
  `results/...`, `archive/...`, or a bare result file name) in README.md, docs/*.md and the results index
  points at a file that exists; a bare name that now lives only in `archive/` must say so.
- Every file and folder in benchmarks/results/ and its archive/ is named in the index
  (benchmarks/results/README.md), so a new result cannot land there unexplained.
"""

from __future__ import annotations

import glob
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
RESULTS = ROOT / "benchmarks" / "results"
INDEX = RESULTS / "README.md"
ARCHIVE = RESULTS / "archive"
TIMEOUT_S = float(os.environ.get("TESSERA_README_TIMEOUT_S", "120"))

FENCE = re.compile(r"^```[^\n]*\n.*?^```[ \t]*$", re.S | re.M)
RESULT_EXT = r"(?:json|jsonl|md|png|log|txt)"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python[ \t]*\n(.*?)^```[ \t]*$", text, re.S | re.M)


def _first_line(code: str) -> str:
    return next(
        (ln for ln in code.splitlines() if ln.strip() and not ln.startswith(("from ", "import "))), code
    )[:60]


BLOCKS = python_blocks(README.read_text())


def test_readme_has_python_blocks():
    assert len(BLOCKS) >= 3, "README.md lost its Python examples?"


@pytest.mark.parametrize("code", BLOCKS, ids=[f"block{i}:{_first_line(c)}" for i, c in enumerate(BLOCKS)])
def test_readme_python_block_runs(code):
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        TRANSFORMERS_VERBOSITY="error",
        OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"),
    )
    try:
        r = subprocess.run(
            [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT_S
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"README block ran past {TIMEOUT_S:.0f} s (TESSERA_README_TIMEOUT_S):\n{code}")
    assert r.returncode == 0, (
        f"README block failed (rc {r.returncode}):\n{code}\n--- stderr ---\n{r.stderr[-3000:]}"
    )
    assert r.stdout.strip(), f"README block printed nothing:\n{code}"


# ---------------------------------------------------------------------------------------------- links


def _expand(path: str) -> list[str]:
    """Shell-style brace expansion: `a.{json,md}` -> [a.json, a.md]; `{_x,}` keeps the empty alternative."""
    m = re.search(r"\{([^{}]*)\}", path)
    if not m:
        return [path]
    return [q for alt in m.group(1).split(",") for q in _expand(path[: m.start()] + alt + path[m.end() :])]


def _exists(p: Path) -> bool:
    return bool(glob.glob(str(p))) if "*" in str(p) else p.exists()


def _documents() -> list[Path]:
    return [README, *sorted((ROOT / "docs").glob("*.md")), INDEX]


def _cited_paths(md: Path) -> list[tuple[str, list[Path], bool]]:
    """(as written, candidate files, must exist) per link and backticked result path outside code blocks."""
    text = FENCE.sub("", md.read_text())
    out = []
    for target in re.findall(r"\[[^\]]*\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue  # a URL or an anchor in the same page
        target = target.split("#")[0]
        out.append((target, [(md.parent / t) for t in _expand(target)], True))
    for span in re.findall(r"`([^`\n]+)`", text):
        for m in re.finditer(
            r"(?<![\w:/.-])((?:benchmarks/)?results/|archive/)((?:\{[^{}\s]*\}|[^\s`'\"<>()\[\],;{])*)", span
        ):
            if span[: m.start()].rstrip().endswith("--out"):
                continue  # a path a command writes, not one it cites
            base = RESULTS if m.group(1) != "archive/" else ARCHIVE
            out.append((m.group(0), [base / t for t in _expand(m.group(2))], True))
        bare = span.strip()
        names = _expand(bare) if re.fullmatch(r"[A-Za-z0-9_{][\w{},.*-]*", bare) else []
        if names and all(re.fullmatch(r"[\w.*-]+\.(?:" + RESULT_EXT + r"|\*)", n) for n in names):
            if any(_exists(RESULTS / n) for n in names):
                out.append((bare, [RESULTS / n for n in names], True))
            elif any(_exists(ARCHIVE / n) for n in names):
                out.append((bare, [], False))  # only in archive/: the document must write archive/<name>
    return out


@pytest.mark.parametrize("md", _documents(), ids=lambda p: str(p.relative_to(ROOT)))
def test_cited_files_exist(md):
    missing = []
    for written, candidates, _ in _cited_paths(md):
        if not candidates:
            missing.append(f"{written} (now in benchmarks/results/archive/: write archive/{written})")
        for c in candidates:
            if not _exists(c):
                missing.append(f"{written} -> {c.relative_to(ROOT) if c.is_relative_to(ROOT) else c}")
    assert not missing, f"{md.relative_to(ROOT)} cites files that do not exist:\n" + "\n".join(missing)


def test_results_index_names_every_result():
    index = INDEX.read_text()
    unnamed = []
    for folder in (RESULTS, ARCHIVE):
        for p in sorted(folder.iterdir()):
            if p.name in ("README.md", "archive") and folder == RESULTS:
                continue
            stem = p.name.split(".")[0] if p.is_file() else p.name
            if stem not in index:
                unnamed.append(str(p.relative_to(ROOT)))
    assert not unnamed, (
        "results without a line in benchmarks/results/README.md (say what each is, or move a "
        "superseded one to archive/ and list it there):\n" + "\n".join(unnamed)
    )
