"""What the one-off A/B scripts of this folder share: `bench_gemm` (one folder up) and the generated
kernels of another git revision.

The scripts run as `python benchmarks/ab/<script>.py`, which puts this folder on `sys.path`, not
`benchmarks/`, so `bench_gemm` is loaded by path.
"""

from __future__ import annotations

import importlib.util
import io
import json
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Where the code generator lived: its own sub-package since b003367, one file before.
CODEGEN_PATHS = ("tessera/kernels/ngemm/codegen.py", "tessera/kernels/int8_codegen.py")


def import_bench_gemm():
    """benchmarks/bench_gemm.py as the module `bench_gemm` (its packing, copying and calling of each path)."""
    if "bench_gemm" not in sys.modules:
        spec = importlib.util.spec_from_file_location("bench_gemm", ROOT / "benchmarks" / "bench_gemm.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules["bench_gemm"] = mod  # its dataclasses look their module up
        spec.loader.exec_module(mod)
    return sys.modules["bench_gemm"]


@dataclass(frozen=True)
class RevKernels:
    rev: str
    codegen_path: str  # which of CODEGEN_PATHS the revision has
    source: str  # the C of the revision's default schedule for the ISA
    flags: tuple[str, ...]
    amx_min_m: int  # that schedule's AMX threshold (0: none)


# Runs in a fresh interpreter inside the revision's extracted `tessera/kernels`. A stub `tessera`
# package keeps the revision's `tessera/__init__.py` (the whole engine) out. What differs between
# revisions: DEFAULT_SCHEDULES moved from the generator module to `schedule.py` next to it, and the AMX
# threshold is `Schedule.amx.min_m` today, `Schedule.amx_min_m` before the schedule was split per
# kernel family. `generate(schedule)` and `flags(schedule)` are the same everywhere.
_GENERATE = r"""
import importlib, json, sys, types
root, module, isa = sys.argv[1:]
pkg = types.ModuleType("tessera")
pkg.__path__ = [root + "/tessera"]
sys.modules["tessera"] = pkg
cg = importlib.import_module(module)
schedules = getattr(cg, "DEFAULT_SCHEDULES", None)
if schedules is None:
    schedules = importlib.import_module(module.rpartition(".")[0] + ".schedule").DEFAULT_SCHEDULES
s = schedules[isa]
amx = getattr(s, "amx", None)
min_m = amx.min_m if amx is not None else getattr(s, "amx_min_m", 0)
print(json.dumps({"source": cg.generate(s), "flags": list(cg.flags(s)), "amx_min_m": min_m}))
"""


def kernels_at(rev: str, isa: str) -> RevKernels:
    """The default schedule's generated C for `isa` as the code generator of git revision `rev` wrote it."""
    tar = subprocess.run(["git", "archive", "--format=tar", rev, "tessera/kernels"], cwd=ROOT, check=True,
                         capture_output=True).stdout
    with tempfile.TemporaryDirectory(prefix=f"tessera_{rev}_") as d:
        tmp = Path(d)
        with tarfile.open(fileobj=io.BytesIO(tar)) as t:
            t.extractall(tmp, filter="data")
        path = next((p for p in CODEGEN_PATHS if (tmp / p).exists()), None)
        if path is None:
            raise SystemExit(f"{rev} has none of {CODEGEN_PATHS}")
        module = path.removesuffix(".py").replace("/", ".")
        res = subprocess.run([sys.executable, "-c", _GENERATE, str(tmp), module, isa], cwd=tmp, capture_output=True,
                             text=True)
    if res.returncode != 0:
        raise SystemExit(f"generating the kernels of {rev} failed:\n{res.stderr[-3000:]}")
    d = json.loads(res.stdout)
    return RevKernels(rev, path, d["source"], tuple(d["flags"]), d["amx_min_m"])
