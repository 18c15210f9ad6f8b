"""tessera.kv has no import cycle and no import-order dependence: every module imports what it uses
directly, so it can be imported first, and the registries fill up whatever was imported first."""

import ast
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
KV = ROOT / "tessera" / "kv"


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = sorted(_module(p) for p in KV.rglob("*.py"))


def _top_level_imports(tree: ast.Module):
    """Import statements run at import time (function bodies and `if TYPE_CHECKING:` blocks are not)."""
    todo = list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, ast.If) and not (isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"):
            todo += node.body + node.orelse
        elif isinstance(node, ast.Try):
            todo += node.body + node.orelse + node.finalbody + [s for h in node.handlers for s in h.body]


def test_no_import_cycle_within_kv():
    """Edges: `import a.b` -> a.b; `from a import b` -> a.b if that is a module, else a itself (names
    taken from a package's __init__). A cycle would mean some module reads names from another
    that is still half-initialised, which works only in one import order."""
    edges = {}
    for path in KV.rglob("*.py"):
        deps = set()
        for node in _top_level_imports(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                deps |= {a.name for a in node.names}
            elif node.module and node.level == 0:
                deps |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in MODULES else node.module
                         for a in node.names}
        edges[_module(path)] = {d for d in deps if d in MODULES}
    state = {}

    def visit(m, stack):
        state[m] = "open"
        for d in sorted(edges[m]):
            assert state.get(d) != "open", f"import cycle: {' -> '.join(stack + [m, d])}"
            if d not in state:
                visit(d, stack + [m])
        state[m] = "done"

    for m in MODULES:
        if m not in state:
            visit(m, [])


_CHECK = """
import importlib.util, sys, types
first = {first!r}
# 1. bare: the packages above `first` are empty stand-ins, so only what `first` imports itself runs
root = importlib.util.find_spec("tessera").submodule_search_locations[0]
for pkg in ("tessera", "tessera.kv", "tessera.kv.presses", "tessera.kv.shadowkv"):
    if first.startswith(pkg + "."):
        sys.modules[pkg] = m = types.ModuleType(pkg)
        m.__path__ = [root + pkg[len("tessera"):].replace(".", "/")]
importlib.import_module(first)
# 2. for real, `first` first, in a clean slate
for name in [n for n in sys.modules if n == "tessera" or n.startswith("tessera.")]:
    del sys.modules[name]
importlib.import_module(first)
import tessera.kv.presses, tessera.kv.shadowkv, tessera.kv
from tessera.kv import KV_BACKENDS
from tessera.kv.presses import PRESSES
assert {{"dense", "quest", "shadowkv"}} <= set(KV_BACKENDS), sorted(KV_BACKENDS)
assert {{"none", "full", "rkv", "snapkv", "streamingllm", "h2o"}} <= set(PRESSES), sorted(PRESSES)
"""


@pytest.mark.slow
def test_every_kv_module_can_be_imported_first():
    """One fresh interpreter per module (run a few at a time)."""

    def run(first):
        p = subprocess.run([sys.executable, "-c", _CHECK.format(first=first)], cwd=ROOT, capture_output=True,
                           text=True, timeout=240)
        return first, p.returncode, p.stderr[-2000:]

    with ThreadPoolExecutor(4) as pool:
        failed = [(m, err) for m, rc, err in pool.map(run, MODULES) if rc]
    assert not failed, "\n\n".join(f"{m}:\n{err}" for m, err in failed)
