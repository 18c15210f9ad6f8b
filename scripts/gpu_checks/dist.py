#!/usr/bin/env python
"""GPU check for the tile-centric distributed kernels (issue 5), one GPU, < 2 minutes on an H100.

1. Compiles the same kernels the CPU tests interpret (tessera/kernels/comm/{ag_gemm,gemm_rs,allreduce}.py)
   and runs them with W virtual ranks on one GPU: heaps carved from one allocation, the rank on
   grid axis 1, the whole grid no larger than the SM count so every spinning program is resident.
   Three calls in a row per case (epoch signals, no resets), fp32 and bf16, vs torch references.
2. Micro-benchmark: per-tile cost of the wait (fused AG-GEMM with W=1, its one wait per tile
   already satisfied) vs the same tile GEMM without waits, and vs torch.matmul.
Prints a summary, writes JSON (--out), exits 1 on any mismatch or error.
`TRITON_INTERPRET=1 python scripts/gpu_checks/dist.py --device cpu --quick` runs it on a CPU.
What it cannot show: multi-GPU overlap, NVLink/IB timing, or cross-process (IPC) heaps.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch
import triton
import triton.language as tl
from check_common import bench, finish, open_device, rel

from tessera.distributed import waits
from tessera.distributed.symm import VirtualHeap
from tessera.kernels.comm import ag_gemm as agm
from tessera.kernels.comm import reference as ref
from tessera.kernels.comm.allreduce import allreduce, create_allreduce_context
from tessera.kernels.comm.gemm_rs import create_gemm_rs_context, gemm_rs
from tessera.kernels.comm.tile import f32_dot, gemm_tile

TOL = {torch.float32: 1e-4, torch.bfloat16: 2e-2}  # max|err| / max|ref|



def plan(sms: int, W: int, quick: bool):
    """Shapes whose whole grid (all virtual ranks) fits in `sms` programs."""
    if quick:
        return {"m_loc": 10, "n": 24, "k": 40, "numel": 300, "tiles": (16, 16, 16), "block": 64}
    tiles = (64, 64, 32)
    for m_loc, n in ((128, 256), (96, 128), (64, 128), (64, 64)):
        ag = (W - 1 + triton.cdiv(W * m_loc, 64) * triton.cdiv(n, 64)) * W
        rs = (W + 1) * triton.cdiv(m_loc, 64) * triton.cdiv(n, 64) * W
        if max(ag, rs) <= sms:
            break
    block = 4096
    numel = max(block, (sms // (3 * W)) * block)  # two-shot grid 3*C per rank
    return {"m_loc": m_loc, "n": n, "k": 512, "numel": numel, "tiles": tiles, "block": block}


def check_case(dev, W, dtype, p, iters=3):
    heap = VirtualHeap(64 << 20, W, dev)
    ag = agm.create_ag_gemm_context(heap, p["m_loc"], p["n"], p["k"], dtype, timeout_s=10, tiles=p["tiles"])
    rs = create_gemm_rs_context(heap, W * p["m_loc"], p["n"], p["k"], dtype, timeout_s=10, tiles=p["tiles"])
    ar = [create_allreduce_context(heap, p["numel"], dtype, two, timeout_s=10, block=p["block"])
          for two in (False, True)]
    worst = {"ag_gemm": 0.0, "gemm_rs": 0.0, "allreduce1": 0.0, "allreduce2": 0.0}
    exact_ar = True
    for it in range(iters):
        g = torch.Generator(device="cpu").manual_seed(it)

        def rnd(*shape, g=g):
            return torch.randn(*shape, generator=g).to(dev, dtype)

        shards = [rnd(p["m_loc"], p["k"]) for _ in range(W)]
        bs = [rnd(p["k"], p["n"]) for _ in range(W)]
        for r, c in enumerate(agm.ag_gemm(shards, bs, ag)):
            worst["ag_gemm"] = max(worst["ag_gemm"], rel(c, ref.ag_gemm_ref(shards, bs[r])))
        a_parts = [rnd(W * p["m_loc"], p["k"]) for _ in range(W)]
        expect = ref.gemm_rs_ref([a.cpu() for a in a_parts], [b.cpu() for b in bs])
        for r, o in enumerate(gemm_rs(a_parts, bs, rs)):
            worst["gemm_rs"] = max(worst["gemm_rs"], rel(o.cpu(), expect[r]))
        xs = [rnd(p["numel"] - it) for _ in range(W)]
        want = ref.allreduce_ref([x.cpu() for x in xs])
        for name, ctx in zip(("allreduce1", "allreduce2"), ar):
            for y in allreduce(xs, ctx):
                worst[name] = max(worst[name], rel(y.cpu(), want))
                exact_ar &= bool(torch.equal(y.cpu(), want))
    heap.close()
    ok = all(v <= TOL[dtype] for v in worst.values()) and exact_ar
    return ok, worst, exact_ar


@triton.jit
def _plain_gemm(a, b, c, M, N, K, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, F32_DOT: tl.constexpr):
    """The AG-GEMM consumer tile without any wait: the baseline of the wait-overhead benchmark."""
    pid = tl.program_id(0)
    pid_m, pid_n = pid // tl.cdiv(N, BN), pid % tl.cdiv(N, BN)
    offs_m = pid_m * BM + tl.arange(0, BM)
    offs_n = pid_n * BN + tl.arange(0, BN)
    acc = gemm_tile(a, b, offs_m, offs_n, M, N, K, K, 1, N, 1, BK, BM, BN, F32_DOT)
    tl.store(c + offs_m[:, None] * N + offs_n[None, :], acc.to(c.dtype.element_ty),
             mask=(offs_m[:, None] < M) & (offs_n[None, :] < N))



def wait_overhead(dev, quick):
    M = N = K = 64 if quick else 4096
    tiles = (16, 16, 16) if quick else (128, 128, 64)
    dtype = torch.bfloat16
    heap = VirtualHeap(2 * (M * K + K * N + M * N) + (1 << 20), 1, dev)  # a_full, b and c copies, signals
    ctx = agm.create_ag_gemm_context(heap, M, N, K, dtype, timeout_s=10, tiles=tiles)
    ctx.a_full.copy_(torch.randn(M, K, device=dev).to(dtype))
    b = torch.randn(K, N, device=dev).to(dtype)
    c = torch.empty(M, N, device=dev, dtype=dtype)
    ctx.epoch = 1
    ctx.ready.fill_(1)  # every tile's one wait is satisfied on the first poll
    heap.bases  # noqa: B018 - the kernel reads the table from the device
    BM, BN, BK = tiles
    n_tiles = triton.cdiv(M, BM) * triton.cdiv(N, BN)
    fused = lambda: agm._launch(ctx, b, c, check_waits=False)
    plain = lambda: _plain_gemm[(n_tiles,)](ctx.a_full, b, c, M, N, K, BM=BM, BN=BN, BK=BK,
                                            F32_DOT=f32_dot(dtype))
    reps = 3 if quick else 50
    t_fused, t_plain = bench(fused, dev, reps), bench(plain, dev, reps)
    t_torch = bench(lambda: ctx.a_full @ b, dev, reps)
    ok = rel(c, ref.ag_gemm_ref([ctx.a_full], b)) <= TOL[dtype]
    waits.raise_on_wait_error(heap, 10, "wait benchmark")
    return ok, {"shape": [M, N, K], "tiles": list(tiles), "n_tiles": n_tiles, "t_fused_s": t_fused,
                "t_plain_s": t_plain, "t_torch_s": t_torch,
                "wait_overhead_per_tile_ns": (t_fused - t_plain) / n_tiles * 1e9,
                "tflops_plain": 2 * M * N * K / t_plain / 1e12}


def ep_case(dev, W: int, dtype, quick: bool, sms: int, iters: int = 3):
    """Expert-parallel dispatch + combine (tessera/kernels/moe/ep_a2a.py) with W virtual ranks: three calls in
    a row against the per-rank reference (rows bitwise, combine of rows * 2 + 1 within dtype tolerance), then
    the launch time with no rows (flags only: the signalling cost per call) and with T tokens per rank."""
    from tessera.kernels.moe import ep_a2a

    E, k, H, T = 2 * W, 2, (64 if quick else 4096), (8 if quick else 512)
    if 2 * W * W > sms:  # every program spins on its peers' flags: all must be resident at once
        raise ValueError(f"a grid of {2 * W * W} programs does not fit at once on {sms} SMs")
    heap = VirtualHeap(ep_a2a.ep_a2a_heap_bytes(W, T, k, H, E, dtype), W, dev)
    ctx = ep_a2a.create_ep_a2a_context(heap, T, k, H, E, dtype, timeout_s=10)
    g = torch.Generator(device="cpu").manual_seed(W)
    local, worst = E // W, 0.0
    for it in range(iters):
        xs = [torch.randn(T, H, generator=g).to(dev, dtype) for _ in range(W)]
        ids = [torch.stack([torch.randperm(E, generator=g)[:k] for _ in range(T)]).to(dev) for _ in range(W)]
        ws = [torch.rand(T, k, generator=g).to(dev) for _ in range(W)]
        out = ep_a2a.dispatch_fused_virtual(xs, ids, ws, ctx)
        for r, (rows, _, _) in enumerate(out):
            want = torch.cat([xs[s][(ids[s] == e).nonzero()[:, 0]] for e in range(r * local, (r + 1) * local)
                              for s in range(W)])
            if not torch.equal(rows, want):
                return False, {"rows_bitwise": False, "iteration": it}
        got = ep_a2a.combine_fused_virtual([o[0] * 2 + 1 for o in out], [o[2] for o in out], ctx)
        for r in range(W):
            ref = ((xs[r].float() * 2 + 1)[:, None] * ws[r][..., None]).sum(1)
            worst = max(worst, rel(got[r].float(), ref))
    tol = 1e-6 if dtype == torch.float32 else 1e-2
    empty = [torch.zeros(0, H, device=dev, dtype=dtype)] * W
    no_ids, no_w = [torch.zeros(0, k, dtype=torch.long, device=dev)] * W, [torch.zeros(0, k, device=dev)] * W
    t_flags = bench(lambda: ep_a2a.dispatch_fused_virtual(empty, no_ids, no_w, ctx), dev, 20)
    t_full = bench(lambda: ep_a2a.dispatch_fused_virtual(xs, ids, ws, ctx), dev, 20)
    return worst < tol, {"rows_bitwise": True, "combine_rel_err": worst, "t_flags_only_s": t_flags,
                         "t_dispatch_s": t_full, "rows_per_rank": T * k, "hidden": H}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--quick", action="store_true", help="tiny shapes (CPU smoke run)")
    ap.add_argument("--out", default=None, help="JSON results path")
    args = ap.parse_args()
    dev, name, sms = open_device("dist", args.device)
    res = {"device": name, "sms": sms, "torch": torch.__version__, "triton": triton.__version__,
           "features": {f: hasattr(tl, f) for f in ("atomic_poll", "atomic_load", "atomic_store")},
           "cases": [], "ok": True}
    t0 = time.time()
    for W in (2, 4):
        p = plan(sms, W, args.quick)
        for dtype in (torch.float32, torch.bfloat16):
            try:
                ok, worst, exact = check_case(dev, W, dtype, p)
                err = None
            except Exception as e:  # noqa: BLE001 - report and go on to the next case
                ok, worst, exact, err = False, {}, False, f"{type(e).__name__}: {e}"
                traceback.print_exc()
            res["cases"].append({"W": W, "dtype": str(dtype), "shapes": p, "ok": ok, "rel_err": worst,
                                 "allreduce_bitwise": exact, "error": err})
            res["ok"] &= ok
            print(f"[{'OK' if ok else 'FAIL'}] W={W} {dtype}: " +
                  ", ".join(f"{k} {v:.2e}" for k, v in worst.items()) + f"; allreduce bitwise={exact}" +
                  (f"; {err}" if err else ""), flush=True)
    for W in (2, 4, 8):
        for dtype in (torch.float32, torch.bfloat16):
            try:
                ok, info = ep_case(dev, W, dtype, args.quick, sms)
            except Exception as e:  # noqa: BLE001 - report and go on
                ok, info = False, {"error": f"{type(e).__name__}: {e}"}
                traceback.print_exc()
            res.setdefault("ep_cases", []).append({"W": W, "dtype": str(dtype), "ok": ok, **info})
            res["ok"] &= ok
            print(f"[{'OK' if ok else 'FAIL'}] ep dispatch/combine W={W} {dtype}: {info}", flush=True)
    try:
        ok, wb = wait_overhead(dev, args.quick)
        res["wait_bench"], res["ok"] = wb, res["ok"] and ok
        print(f"[{'OK' if ok else 'FAIL'}] wait overhead: fused {wb['t_fused_s'] * 1e6:.1f} us vs no-wait "
              f"{wb['t_plain_s'] * 1e6:.1f} us vs torch {wb['t_torch_s'] * 1e6:.1f} us over {wb['n_tiles']} tiles "
              f"-> {wb['wait_overhead_per_tile_ns']:.1f} ns/tile; no-wait GEMM {wb['tflops_plain']:.1f} TFLOP/s")
    except Exception as e:  # noqa: BLE001
        traceback.print_exc()
        res["ok"], res["wait_bench_error"] = False, f"{type(e).__name__}: {e}"
    return finish("dist", name, res, t0, args.out)


if __name__ == "__main__":
    sys.exit(main())
