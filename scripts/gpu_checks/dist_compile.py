#!/usr/bin/env python
"""Compile the distributed kernels for a CUDA target without a GPU (triton ships ptxas), to catch
what the interpreter accepts but the compiler rejects (e.g. atomic_cas operand types) before GPU
time is spent. Usage: `python scripts/gpu_checks/dist_compile.py [--arch 90]`; exit 1 on failure.
Works with triton 3.6 (the GPU image) and 3.9 (PyPI): `PYTHONPATH=<triton-3.6 dir>:. python ...`.
tests/test_dist_compile.py runs `--quick` in CI (skipped where the triton wheel has no ptxas).
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
os.environ.pop("TRITON_INTERPRET", None)

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from tessera.dist.lang import _spin_kernel
from tessera.kernels.ag_gemm import _ag_gemm_kernel
from tessera.kernels.allreduce import _allreduce_kernel
from tessera.kernels.gemm_rs import _gemm_rs_kernel

# the launcher types a Python int by its value (i32 below 2**31, else i64): counters that grow across
# calls are compiled both ways, as a long run will meet both
COUNTERS = ("max_spins", "epoch")


def compile_one(fn, ptrs: dict, consts: dict, target, counter: str) -> str:
    sig = {n: "constexpr" if n in consts else ptrs.get(n, counter if n in COUNTERS else "i32") for n in fn.arg_names}
    src = ASTSource(fn=fn, signature=sig, constexprs={(fn.arg_names.index(k),): v for k, v in consts.items()})
    return triton.compile(src, target=target).asm["ptx"]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", type=int, default=90)
    ap.add_argument("--quick", action="store_true", help="bf16 and virtual ranks only (what CI runs)")
    args = ap.parse_args()
    target = GPUTarget("cuda", args.arch, 32)
    common = {"err": "*i64", "bases": "*i64"}
    cases = []
    for dt in ("bf16",) if args.quick else ("bf16", "fp32"):
        f32 = dt == "fp32"
        for virtual in (True,) if args.quick else (False, True):
            flags = {"VIRTUAL": virtual, "FIX_RNE": False}
            cases += [
                (_ag_gemm_kernel, {"a_full": f"*{dt}", "b": f"*{dt}", "c": f"*{dt}", "ready": "*i64", **common},
                 {"BM": 64, "BN": 64, "BK": 32, "PUSH": 2048, "F32_DOT": f32, **flags}),
                (_gemm_rs_kernel, {"a": f"*{dt}", "b": f"*{dt}", "out": f"*{dt}", "partials": "*fp32",
                                   "sig": "*i64", **common},
                 {"BM": 64, "BN": 64, "BK": 32, "F32_DOT": f32, **flags}),
                (_allreduce_kernel, {"stage": f"*{dt}", "out": f"*{dt}", "sig1": "*i64", "sig2": "*i64", **common},
                 {"BLOCK": 1024, "TWO_SHOT": virtual, **flags}),
            ]
    cases.append((_spin_kernel, {"buf": "*i64"}, {}))
    failed = 0
    cases = [(*c, counter) for c in cases for counter in ("i32", "i64")]
    for fn, ptrs, consts, counter in cases:
        try:
            ptx = compile_one(fn, ptrs, consts, target, counter)
            print(f"ok   {fn.__name__} {consts} counters {counter} ({len(ptx)} chars of PTX)")
        except Exception as e:  # noqa: BLE001 - report every failing variant
            failed += 1
            print(f"FAIL {fn.__name__} {consts} counters {counter}: {type(e).__name__}: {str(e)[-600:]}")
    print(f"triton {triton.__version__}, sm_{target.arch}: {len(cases) - failed}/{len(cases)} compiled")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
