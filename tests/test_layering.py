"""The package graph of tessera has no cycle: no two sub-packages import each other, even through others.

Imports anywhere in a module count (function-level imports too): a lazy import is still a dependency.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "tessera"


def _package(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "tessera" else None


def _graph() -> dict[str, set[str]]:
    g: dict[str, set[str]] = {}
    for f in ROOT.rglob("*.py"):
        rel = f.relative_to(ROOT.parent).with_suffix("")
        src = _package(".".join(rel.parts))
        if src is None:
            continue
        for node in ast.walk(ast.parse(f.read_text())):
            names = [node.module] if isinstance(node, ast.ImportFrom) and node.module else \
                [a.name for a in node.names] if isinstance(node, ast.Import) else []
            for n in names:
                dst = _package(n)
                if dst and dst != src:
                    g.setdefault(src, set()).add(dst)
    return g


def test_no_cycle_between_packages():
    g = _graph()

    def reaches(a, b, seen):
        return any(c == b or (c not in seen and reaches(c, b, seen | {c})) for c in g.get(a, ()))

    cycles = sorted((a, b) for a in g for b in g[a] if reaches(b, a, {b}))
    assert not cycles, f"package import cycles: {cycles}"


def test_the_distributed_core_and_kernels_import_nothing_above_them():
    g = _graph()
    assert g.get("distributed", set()) <= {"config"}
    assert g.get("kernels", set()) <= {"distributed", "config"}
    assert g.get("layers", set()) <= {"kernels", "distributed", "config"}


@pytest.mark.parametrize("module", ["tessera.distributed.testing", "tessera.kernels.comm.decomposed"])
def test_test_only_modules_are_not_imported_by_the_package(module):
    """The rank pool the tests and benchmarks run ranks in, and the torch.distributed baselines the fused
    TileLink ops are measured against, are test- and benchmark-only."""
    parent, _, leaf = module.rpartition(".")
    users = []
    for f in ROOT.rglob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            names = [node.module] if isinstance(node, ast.ImportFrom) and node.module else \
                [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module == parent:
                names += [f"{parent}.{a.name}" for a in node.names]
            if module in names and f.stem != leaf:
                users.append(str(f.relative_to(ROOT.parent)))
    assert not users, f"package modules import the test-only {module}: {users}"
