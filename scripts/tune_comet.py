#!/usr/bin/env python
"""Profile COMET's fused layers over (n_c, n_blocks) for one shape on W gloo ranks of this machine, record the
fastest in the on-disk cache (or, with --ship, in the table shipped with Tessera) and print the top
configurations (COMET, arXiv 2502.19811 §3.2.2: the split is chosen offline, per shape).

    TRITON_INTERPRET=1 python scripts/tune_comet.py --world 2 --tokens 32 --experts 4 --hidden 64 --ffn 32

Per repetition the slowest rank's time of layer0 + layer1 counts. On a CPU the kernels run in Triton's
interpreter, so the ranking says how the interpreter likes the split, not a GPU: the entries are keyed by
device ("cpu") and a GPU never reads them.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import torch

from tessera.kernels.moe import comet_tune as tune


def _job(a: dict, configs: list, reps: int):
    import time

    import torch.distributed as dist

    from tessera.distributed import parallel_state as ps
    from tessera.distributed.symm import SymmetricHeap
    from tessera.kernels.moe.comet_context import comet_heap_bytes, create_comet_context
    from tessera.kernels.moe.comet_layer0 import comet_layer0
    from tessera.kernels.moe.comet_layer1 import comet_layer1

    torch.set_num_threads(1)
    W, r = ps.world_size(), ps.rank()
    EL, T = a["experts"] // W, a["tokens"] // W
    dtype = getattr(torch, a["dtype"])
    g = torch.Generator().manual_seed(r)
    x = torch.randn(T, a["hidden"], generator=g).to(dtype)
    ids = torch.stack([torch.randperm(a["experts"], generator=g)[: a["top_k"]] for _ in range(T)])
    w = torch.rand(T, a["top_k"], generator=g)
    wgu = torch.randn(EL, 2 * a["ffn"], a["hidden"], generator=g).to(dtype)
    wd = torch.randn(EL, a["hidden"], a["ffn"], generator=g).to(dtype)
    shape = (T, a["top_k"], a["hidden"], a["ffn"], a["experts"], dtype)
    heap = SymmetricHeap(comet_heap_bytes(W, *shape, tiles=a["tiles"], nc_max=a["nc_max"]))
    ctx = create_comet_context(heap, *shape, timeout_s=120, tiles=a["tiles"], nc_max=a["nc_max"])
    out = {}
    try:
        for n_c, nb in configs:
            cfg = tune.CometConfig(n_c, nb)
            times = []
            for i in range(reps + 1):  # the first call warms up
                dist.barrier()
                t0 = time.perf_counter()
                act, lay = comet_layer0(x, ids, w, wgu, ctx, config=cfg)
                comet_layer1(act, wd, lay, ctx)
                if i:
                    times.append(time.perf_counter() - t0)
            out[(n_c, nb)] = times
    finally:
        heap.close()
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--world", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=32, help="global tokens per call (split evenly over ranks)")
    ap.add_argument("--experts", type=int, default=4)
    ap.add_argument("--top-k", type=int, default=2)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--ffn", type=int, default=32)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--tiles", default="16,16,16")
    ap.add_argument("--nc-max", type=int, default=8)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--top", type=int, default=5)
    ap.add_argument("--ship", action="store_true", help="write the shipped table instead of the local cache")
    args = ap.parse_args()
    os.environ.setdefault("TRITON_INTERPRET", "1")
    # test- and benchmark-only, never imported by the package
    from tessera.distributed.testing import RankPool

    tiles = tuple(int(t) for t in args.tiles.split(","))
    a = {"tokens": args.tokens, "experts": args.experts, "top_k": args.top_k, "hidden": args.hidden, "ffn": args.ffn,
         "dtype": args.dtype, "tiles": tiles, "nc_max": args.nc_max}
    max_blocks = min(16, -(-args.hidden // tiles[1]))
    configs = [(c.n_c, c.n_blocks) for c in tune.candidates(args.world, args.nc_max, max_blocks)]
    pool = RankPool(args.world, gloo_timeout_s=300)
    try:
        per_rank = pool.run(_job, a, configs, args.reps, timeout=3600)
    finally:
        pool.stop()
    ranked = sorted((tune.summary(tune.CometConfig(*cfg), [max(r[cfg][i] for r in per_rank) for i in range(args.reps)])
                     for cfg in configs), key=lambda row: row["median_s"])
    # the ranks are CPU processes (heaps in /dev/shm): the entry is for the CPU (interpreter), whatever else is here
    key = tune.TuneKey(tune.bucket(args.tokens), args.experts, args.top_k, args.world, args.hidden, args.ffn, "cpu")
    path = tune.record(key, ranked, tune.DEFAULTS if args.ship else None)
    print(tune.format_top(key, ranked, args.top))
    print(f"recorded n_c={ranked[0]['n_c']} n_blocks={ranked[0]['n_blocks']} in {path}")


if __name__ == "__main__":
    main()
