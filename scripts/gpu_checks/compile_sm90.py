#!/usr/bin/env python
"""Compile every Triton kernel of Tessera for a CUDA target without a GPU (triton ships ptxas), to catch
what the interpreter accepts but the compiler rejects (atomic_cas operand types, a loop-carried value
changing from i32 to i64) before GPU time is spent: the distributed kernels, ShadowKV's scoring,
rebuild and decode kernels, the W8A8 GEMM, the MoE grouped GEMM, the expert-parallel dispatch / combine and COMET's fused layer0 / layer1,
R-KV's fused redundancy statistics.
Usage: `python scripts/gpu_checks/compile_sm90.py [--arch 90] [--quick]`; exit 1 on failure.
Works with triton 3.6 (the GPU image) and 3.9 (PyPI): `PYTHONPATH=<triton-3.6 dir>:. python ...`.
tests/test_compile_sm90.py runs `--quick` in CI (skipped where the triton wheel has no ptxas).
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

from tessera.distributed.waits import _spin_kernel
from tessera.kernels.comm.ag_gemm import _ag_gemm_kernel
from tessera.kernels.comm.allreduce import _allreduce_kernel
from tessera.kernels.comm.gemm_rs import _gemm_rs_kernel
from tessera.kernels.moe.comet_layer0 import _layer0_kernel
from tessera.kernels.moe.comet_layer1 import _layer1_kernel
from tessera.kernels.moe.ep_a2a import _combine_kernel, _dispatch_kernel
from tessera.kernels.moe.grouped_gemm import _grouped_gemm_kernel
from tessera.kernels.ngemm.gemm_triton import _quantize_kernel, _w8a8_kernel
from tessera.kernels.rkv.redundancy import _row_stats_kernel
from tessera.kernels.shadowkv.attn import _decode_kernel
from tessera.kernels.shadowkv.rebuild import _rebuild_kernel
from tessera.kernels.shadowkv.score import _logits_kernel, _pool_kernel

# the launcher types a Python int by its value (i32 below 2**31, else i64): counters that grow across
# calls are compiled both ways, as a long run will meet both
COUNTERS = ("max_spins", "epoch")
FLOATS = ("scale", "threshold")  # float scalar arguments


def compile_one(fn, ptrs: dict, consts: dict, target, counter: str) -> str:
    sig = {n: "constexpr" if n in consts else ptrs.get(n, counter if n in COUNTERS else "fp32" if n in FLOATS else "i32")
           for n in fn.arg_names}
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
    cases = [(*c, counter) for c in cases for counter in ("i32", "i64")]
    fp32_ptrs = {n: "*fp32" for n in ("logit_ptr", "m_ptr", "s_ptr", "out_ptr", "acc_ptr", "inv_ptr", "sa_ptr", "sw_ptr",
                                "bias_ptr", "u_ptr", "sv_ptr")}
    for dt in ("bf16",) if args.quick else ("bf16", "fp32"):  # ShadowKV: the model's dtype in, fp32 statistics
        cases += [(fn, {**fp32_ptrs, **ptrs}, consts, "-") for fn, ptrs, consts in (
            (_logits_kernel, {"q_ptr": f"*{dt}", "lm_ptr": f"*{dt}", "nv_ptr": "*i32"},
             {"BLOCK_G": 4, "BLOCK_N": 64, "BLOCK_D": 128}),
            (_pool_kernel, {"nv_ptr": "*i32"}, {"BLOCK_G": 4, "BLOCK_N": 64}),
            (_decode_kernel, {"q_ptr": f"*{dt}", "k_ptr": f"*{dt}", "v_ptr": f"*{dt}", "valid_ptr": "*i8"},
             {"HAS_VALID": True, "BLOCK_G": 4, "BLOCK_N": 64, "BLOCK_D": 128}),
            (_rebuild_kernel, {"head_ptr": "*i64", "chunk_ptr": "*i64", "pos_ptr": "*i64"},
             {"BLOCK_C": 8, "BLOCK_R": 32, "BLOCK_H": 64}))]
    cases.append((_w8a8_kernel, {**fp32_ptrs, "a_ptr": "*i8", "w_ptr": "*i8"},
                  {"HAS_BIAS": True, "BLOCK_M": 16, "BLOCK_N": 64, "BLOCK_K": 128}, "-"))
    cases.append((_quantize_kernel, {"x_ptr": "*bf16", "q_ptr": "*i8", "s_ptr": "*fp32"}, {"BLOCK": 1024}, "-"))
    for dt in ("bf16",) if args.quick else ("bf16", "fp32"):  # MoE experts: one launch for every expert's rows
        cases.append((_grouped_gemm_kernel, {"a_ptr": f"*{dt}", "w_ptr": f"*{dt}", "c_ptr": f"*{dt}",
                                             "tile_expert_ptr": "*i32", "tile_row_ptr": "*i32", "row_end_ptr": "*i32"},
                      {"BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": 32, "F32_DOT": dt == "fp32"}, "-"))
        for virtual in (True,) if args.quick else (False, True):  # expert-parallel dispatch and combine
            cases.append((_dispatch_kernel, {"send": f"*{dt}", "send_w": "*fp32", "send_off": "*i64", "send_cnt": "*i64",
                                             "recv": f"*{dt}", "recv_w": "*fp32", "recv_meta": "*i64", "sig": "*i64",
                                             **common}, {"BLOCK_R": 16, "BLOCK_H": 128, "BLOCK_E": 8, "VIRTUAL": virtual},
                          "i64"))
            cases.append((_combine_kernel, {"back": f"*{dt}", "ret": f"*{dt}", "recv_meta": "*i64", "sig": "*i64",
                                            **common}, {"BLOCK_R": 16, "BLOCK_H": 128, "VIRTUAL": virtual}, "i64"))
    cases.append((_row_stats_kernel, {"k_ptr": "*fp32", "n_ptr": "*i32", "sum_ptr": "*fp32", "last_ptr": "*i32",
                                      "val_ptr": "*fp32"}, {"BLOCK_I": 32, "BLOCK_J": 32, "BLOCK_D": 64, "IEEE": True}, "-"))
    for dt in ("bf16",) if args.quick else ("bf16", "fp32"):  # COMET layer0 / layer1 (tessera/kernels/moe/comet_*)
        for virtual in (True,) if args.quick else (False, True):
            for trace in (False,) if args.quick or virtual else (False, True):
                flags = {"VIRTUAL": virtual, "FIX_RNE": False, "F32_DOT": dt == "fp32", "TRACE": trace}
                for counter in ("i32", "i64"):
                    cases.append((_layer0_kernel, {
                        "send": f"*{dt}", "send_w": "*fp32", "send_tok": "*i64", "send_off": "*i64", "recv": f"*{dt}",
                        "recv_w": "*fp32", "recv_tok": "*i64", "w_gu": f"*{dt}", "act": f"*{dt}", "rtab": "*i64",
                        "params": "*i64", "sig0": "*i64", "trace": "*i64", **common},
                        {"NC_MAX": 8, "BM": 64, "BN": 64, "BK": 32, "BLOCK_R": 16, "BLOCK_H": 128, **flags}, counter))
                    cases.append((_layer1_kernel, {
                        "act": f"*{dt}", "w_down": f"*{dt}", "y": f"*{dt}", "rtab": "*i64", "prog": "*i64",
                        "gtab": "*i64", "grows": "*i64", "gw": "*fp32", "gtok": "*i64", "comb": "*fp32", "out": f"*{dt}",
                        "home_mask": "*i64", "params": "*i64", "tflag": "*i64", "sig1": "*i64", "trace": "*i64",
                        **common}, {"TOPK": 2, "NC_MAX": 8, "NB_MAX": 16, "BM": 64, "BN": 64, "BK": 32, "BG": 16,
                                    "BT": 16, **flags}, counter))
    failed = 0
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
