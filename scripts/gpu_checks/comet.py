#!/usr/bin/env python
"""GPU check for COMET's fused MoE layers (tessera/kernels/moe/comet_layer0.py, comet_layer1.py), one GPU.

1. Compiles both layers and runs them with W = 2 and 4 virtual ranks (W heaps in one allocation, the rank
   on grid axis 1), fp32 and bf16, three calls in a row (epoch flags, no resets; routing: random, every
   token to one expert, a rank with no tokens), each call with another (n_c, n_blocks), against the torch
   references (`comet_ref`): layer0's act rows and the layers' output at home. Shapes are chosen so that
   every launch's whole grid (all virtual ranks) fits in the SM count, so every spinning program is resident.
2. The inputs the performance model needs, with W = 1 (no remote rank, so every wait is satisfied on its
   first poll): time of the fused layer1 launch vs the column-block count and vs n_c (programs that do not
   compute), the fused layer0 launch vs n_c, each beside the plain grouped GEMM (`grouped_gemm.py`) over the
   same rows, in the same run.
Prints a summary, writes JSON (--out), exits 1 on any mismatch or error.
`TRITON_INTERPRET=1 python scripts/gpu_checks/comet.py --device cpu --quick` runs the same logic on a CPU.
What it cannot show: multi-GPU overlap (one GPU), NVLink timing, cross-process heaps.
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
from check_common import bench, finish, open_device, rel

from tessera.distributed import waits
from tessera.distributed.symm import VirtualHeap
from tessera.kernels.moe import comet_layer0 as L0
from tessera.kernels.moe import comet_layer1 as L1
from tessera.kernels.moe.comet_context import comet_heap_bytes, create_comet_context
from tessera.kernels.moe.comet_ref import layer0_ref, moe_ref
from tessera.kernels.moe.comet_tune import CometConfig
from tessera.kernels.moe.grouped_gemm import grouped_gemm

TOL = {torch.float32: 1e-4, torch.bfloat16: 2e-2}  # max|err| / max|ref|
CONFIGS = [CometConfig(2, 2), CometConfig(1, 1), CometConfig(4, 2)]



def shapes(quick: bool) -> dict:
    if quick:
        return {"T": 6, "k": 2, "H": 40, "I": 20, "E_per_rank": 2, "tiles": (16, 16, 16)}
    # per rank at most: row tiles 2T k / 64 + W E_l = 12 (W = 4), layer0 2 + 12 programs, layer1 12 x 2 tiles +
    # 2 x 2 senders + 2 home: 30; x 4 virtual ranks = 120 <= 132 SMs
    return {"T": 16, "k": 2, "H": 128, "I": 64, "E_per_rank": 2, "tiles": (64, 64, 32)}


def routing(W: int, it: int, s: dict, E: int, dev, dtype):
    """Call `it`'s inputs for every rank: random routes; call 1 every token to expert 0; call 2 rank 0 idle."""
    g = torch.Generator().manual_seed(it)
    xs, ids, ws = [], [], []
    for r in range(W):
        T = 0 if it == 2 and r == 0 else s["T"] - r
        i = torch.stack([torch.randperm(E, generator=g)[: s["k"]] for _ in range(T)]) if T else torch.zeros(0, s["k"])
        if it == 1 and T:
            i[:, 0] = 0
        xs.append(torch.randn(T, s["H"], generator=g).to(dev, dtype))
        ids.append(i.long().to(dev))
        ws.append(torch.rand(T, s["k"], generator=g).to(dev))
    return xs, ids, ws


def check_case(dev, W: int, dtype, s: dict, sms: int):
    E = W * s["E_per_rank"]
    EL = s["E_per_rank"]
    g = torch.Generator().manual_seed(100 + W)
    wgu = (torch.randn(E, 2 * s["I"], s["H"], generator=g) / s["H"] ** 0.5).to(dev, dtype)
    wd = (torch.randn(E, s["H"], s["I"], generator=g) / s["I"] ** 0.5).to(dev, dtype)
    heap = VirtualHeap(comet_heap_bytes(W, s["T"], s["k"], s["H"], s["I"], E, dtype, s["tiles"], virtual=True), W, dev)
    ctx = create_comet_context(heap, s["T"], s["k"], s["H"], s["I"], E, dtype, timeout_s=10, tiles=s["tiles"])
    worst = {"layer0": 0.0, "layer1": 0.0}
    grids = []
    for it, cfg in enumerate(CONFIGS):
        xs, ids, ws = routing(W, it, s, E, dev, dtype)
        acts, lays = L0.comet_layer0(xs, ids, ws, [wgu[r * EL:(r + 1) * EL] for r in range(W)], ctx, config=cfg)
        for r in range(W):
            worst["layer0"] = max(worst["layer0"], rel(acts[r].cpu(), layer0_ref([x.cpu() for x in xs],
                                                                                [i.cpu() for i in ids], wgu.cpu(), r)))
        outs = L1.comet_layer1(acts, [wd[r * EL:(r + 1) * EL] for r in range(W)], lays, ctx)
        for r in range(W):
            want = moe_ref(xs[r].cpu(), ids[r].cpu(), ws[r].cpu(), wgu.cpu(), wd.cpu())
            worst["layer1"] = max(worst["layer1"], rel(outs[r].cpu(), want))
        grids.append(dict(ctx.last_grid))
    heap.close()
    resident = all(g * W <= sms for grid in grids for g in grid.values())
    return all(v <= TOL[dtype] for v in worst.values()) and resident, worst, grids, resident



def efficiency(dev, quick: bool) -> dict:
    """W = 1: the fused launches (waits satisfied at once) vs the plain grouped GEMM over the same rows."""
    dtype = torch.bfloat16
    T, k, H, FF, E = (8, 2, 40, 20, 2) if quick else (2048, 2, 2048, 1024, 8)
    tiles = (16, 16, 16) if quick else (64, 64, 32)
    reps = 2 if quick else 20
    g = torch.Generator().manual_seed(0)
    wgu = (torch.randn(E, 2 * FF, H, generator=g) / H**0.5).to(dev, dtype)
    wd = (torch.randn(E, H, FF, generator=g) / FF**0.5).to(dev, dtype)
    x = torch.randn(T, H, generator=g).to(dev, dtype)
    ids = torch.stack([torch.randperm(E, generator=g)[:k] for _ in range(T)]).to(dev)
    w = torch.rand(T, k, generator=g).to(dev)
    heap = VirtualHeap(comet_heap_bytes(1, T, k, H, FF, E, dtype, tiles, nc_max=32, virtual=True), 1, dev)
    ctx = create_comet_context(heap, T, k, H, FF, E, dtype, timeout_s=10, tiles=tiles, nc_max=32)
    acts, lays = L0.comet_layer0([x], [ids], [w], [wgu], ctx)
    offsets = torch.tensor([0, *torch.cumsum(lays[0].counts[0, 0], 0).tolist()])
    act = acts[0].clone()
    t_g0 = bench(lambda: grouped_gemm(ctx.view("recv", 0)[: len(act)], wgu, offsets, *tiles), dev, reps)
    t_g1 = bench(lambda: grouped_gemm(act, wd, offsets, *tiles), dev, reps)
    out = {"shape": {"T": T, "k": k, "H": H, "FF": FF, "E": E, "tiles": list(tiles)},
           "grouped_gemm0_s (gate+up, no SwiGLU)": t_g0, "grouped_gemm1_s": t_g1, "layer0": [], "layer1": []}
    n_ct = triton.cdiv(H, tiles[1])
    for n_c in (1, 4, 16, 32):
        cfg = CometConfig(n_c, 1)
        acts, lays = L0.comet_layer0([x], [ids], [w], [wgu], ctx, config=cfg)
        rt = lays[0].row_tiles
        t0 = bench(lambda cfg=cfg, rt=rt: L0._launch(ctx, rt, cfg, None, check_waits=False), dev, reps)
        out["layer0"].append({"n_c": n_c, "t_s": t0, "vs_grouped_gemm0": t0 / t_g0})
        for nb in sorted({1, 2, 4, 8, 16} & set(range(1, min(16, n_ct) + 1))):
            acts, lays = L0.comet_layer0([x], [ids], [w], [wgu], ctx, config=CometConfig(n_c, nb))
            L1.comet_layer1(acts, [wd], lays, ctx)
            n_prog = ctx.last_grid["layer1"]
            t1 = bench(lambda n_prog=n_prog: L1._launch(ctx, n_prog, None, check_waits=False), dev, reps)
            out["layer1"].append({"n_c": n_c, "n_blocks": nb, "t_s": t1, "vs_grouped_gemm1": t1 / t_g1})
    waits.raise_on_wait_error(heap, 10, "comet efficiency")
    heap.close()
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--quick", action="store_true", help="tiny shapes (CPU smoke run)")
    ap.add_argument("--no-bench", action="store_true", help="correctness only")
    ap.add_argument("--out", default=None, help="JSON results path")
    args = ap.parse_args()
    dev, name, sms = open_device("comet", args.device)
    res = {"device": name, "sms": sms, "torch": torch.__version__, "triton": triton.__version__, "cases": [], "ok": True}
    t0 = time.time()
    s = shapes(args.quick)
    for W in (2, 4):
        for dtype in (torch.float32, torch.bfloat16):
            try:
                ok, worst, grids, resident = check_case(dev, W, dtype, s, sms)
                err = None
            except Exception as e:  # noqa: BLE001 - report and go on to the next case
                ok, worst, grids, resident, err = False, {}, [], False, f"{type(e).__name__}: {e}"
                traceback.print_exc()
            res["cases"].append({"W": W, "dtype": str(dtype), "shapes": {**s, "tiles": list(s["tiles"])}, "ok": ok,
                                 "rel_err": worst, "grids": grids, "resident": resident, "error": err})
            res["ok"] &= ok
            print(f"[{'OK' if ok else 'FAIL'}] W={W} {dtype}: " + ", ".join(f"{k} {v:.2e}" for k, v in worst.items())
                  + f"; grids per rank {grids}" + ("" if resident else " NOT RESIDENT") + (f"; {err}" if err else ""),
                  flush=True)
    if not args.no_bench:
        try:
            eff = efficiency(dev, args.quick)
            res["efficiency"] = eff
            print(f"grouped GEMM0 {eff['grouped_gemm0_s (gate+up, no SwiGLU)'] * 1e6:.1f} us, GEMM1 "
                  f"{eff['grouped_gemm1_s'] * 1e6:.1f} us ({eff['shape']})")
            for row in eff["layer0"]:
                print(f"  layer0 n_c={row['n_c']:>2}: {row['t_s'] * 1e6:9.1f} us ({row['vs_grouped_gemm0']:.2f}x GEMM0)")
            for row in eff["layer1"]:
                print(f"  layer1 n_c={row['n_c']:>2} n_blocks={row['n_blocks']:>2}: {row['t_s'] * 1e6:9.1f} us "
                      f"({row['vs_grouped_gemm1']:.2f}x GEMM1)")
        except Exception as e:  # noqa: BLE001
            traceback.print_exc()
            res["ok"], res["efficiency_error"] = False, f"{type(e).__name__}: {e}"
    return finish("comet", name, res, t0, args.out)


if __name__ == "__main__":
    sys.exit(main())
