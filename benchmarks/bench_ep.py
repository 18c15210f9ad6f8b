"""Expert-parallel dispatch + combine latency on this CPU: torch (all_to_all_single), decomposed (one async
send per peer) and fused (Triton puts on the symmetric heap, interpreted on CPU) on real gloo processes,
per message size, in one run; median and [q1, q3] of the slowest rank per repetition.

Each rank routes T tokens of hidden size H to top-k of E experts at random (uniform), then dispatch ->
identity experts -> combine. "bytes to peers" is what one rank sends to the others in dispatch (combine
returns as many). Writes benchmarks/results/ep_cpu.{json,md}.

    PYTHONPATH=. python benchmarks/bench_ep.py [--world 2] [--reps 9]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch
from bench_overlap import summarize  # slowest rank per repetition, median and quartiles
from machine import describe
from save import save_result

from tessera.distributed.testing import RankPool

H, K, E = 256, 2, 8
TOKENS = (8, 64, 512, 2048)  # per rank
FUSED_TOKENS = (8, 64)  # the interpreter runs one program after another: larger sizes take minutes


def _job(tokens, reps: int, fused_tokens):
    import torch.distributed as dist

    from tessera.distributed import parallel_state as ps
    from tessera.distributed.symm import SymmetricHeap
    from tessera.kernels.moe.ep_a2a import (
        combine_fused,
        create_ep_a2a_context,
        dispatch_fused,
        ep_a2a_heap_bytes,
    )
    from tessera.parallel import ep_decomposed, ep_dispatch

    torch.set_num_threads(1)  # one core per rank
    W = ps.world_size()
    heap = SymmetricHeap(ep_a2a_heap_bytes(W, max(fused_tokens), K, H, E, torch.float32))
    ctx = create_ep_a2a_context(heap, max(fused_tokens), K, H, E, timeout_s=120)
    out = {}
    try:
        for T in tokens:
            g = torch.Generator().manual_seed(ps.rank() * 1000 + T)
            x = torch.randn(T, H, generator=g)
            ids = torch.stack([torch.randperm(E, generator=g)[:K] for _ in range(T)])
            w = torch.rand(T, K, generator=g)
            ops = {
                "torch": lambda x=x, ids=ids, w=w: _round(ep_dispatch, x, ids, w),
                "decomposed": lambda x=x, ids=ids, w=w: _round(ep_decomposed, x, ids, w),
                "decomposed, overlapped": lambda x=x, ids=ids, w=w: ep_decomposed.run_overlapped(
                    x, ids, w, E, lambda r, o: r),
            }
            if T in fused_tokens:
                ops["fused (interpreted)"] = lambda x=x, ids=ids, w=w: combine_fused(
                    *_pick(dispatch_fused(x, ids, w, ctx)), ctx)
            for name, fn in ops.items():
                fn()  # warm-up (the interpreter parses the kernels here)
                times = []
                for _ in range(reps if "fused" not in name else max(3, reps // 3)):
                    dist.barrier()
                    t0 = time.perf_counter()
                    fn()
                    times.append(time.perf_counter() - t0)
                out[f"{T}/{name}"] = times
            sent = ep_dispatch.dispatch(x, ids, w, E)[2].send_counts
            out[f"{T}/bytes"] = [float((sum(sent) - sent[ps.rank()]) * H * 4)]
    finally:
        heap.close()
    return out


def _round(mod, x, ids, w):
    rows, _, layout = mod.dispatch(x, ids, w, E)
    return mod.combine(rows, layout)


def _pick(d):  # (rows, weights, layout) -> (rows, layout)
    return d[0], d[2]


def write_md(path: str, doc: dict) -> None:
    L = [f"# Expert-parallel dispatch + combine on this CPU ({doc['machine']}, {doc['world']} gloo ranks, "
         "1 thread each)", "",
         f"Run {doc['when']} (load average {doc['loadavg']:.1f} at start"
         f"{': other jobs shared the machine' if doc['loadavg'] > 2 else ''}), torch "
         f"{doc['torch']}; H = {H}, top-{K} of {E} experts, uniform random routing, fp32; per repetition the "
         "slowest rank's time; median [q1, q3] in ms; ratio against torch at the same size.", "",
         "| tokens / rank | bytes to peers / rank | impl | median ms | [q1, q3] ms | vs torch |",
         "| --- | --- | --- | --- | --- | --- |"]
    r = doc["results"]
    for T in doc["tokens"]:
        base = r[f"{T}/torch"]["median_s"]
        for key, v in r.items():
            t, name = key.split("/", 1)
            if int(t) != T or name == "bytes":
                continue
            L.append(f"| {T} | {r[f'{T}/bytes']['median_s'] / 2**10:.0f} KiB | {name} | {v['median_s'] * 1e3:.2f} | "
                     f"[{v['q1_s'] * 1e3:.2f}, {v['q3_s'] * 1e3:.2f}] | {base / v['median_s']:.2f}x |")
    L += ["", "## What 2 cores can and cannot show", "", *doc["notes"]]
    with open(path, "w") as fh:
        fh.write("\n".join(L) + "\n")


NOTES = [
    "- Two ranks on two cores over loopback gloo: each message is a memcpy through the kernel's socket path, "
    "tens of microseconds of fixed cost per message, not NVLink or RDMA. Per-message overheads dominate small "
    "sizes; the decomposed path sends 2 (W - 1) messages per round against the collective's fixed cost.",
    "- With identity experts there is nothing to overlap: `decomposed, overlapped` (the path the model runs) "
    "measures the per-peer structure. It also moves less: no routing-weight message (weights are applied at "
    "home) and no regroup copy (each source's rows are already grouped by expert), which is where its lead over "
    "`torch` at 512+ tokens comes from. A gain from overlap itself needs expert compute running while a peer's "
    "rows are in flight, which two busy cores cannot provide; the performance model carries that question.",
    "- Small sizes (8, 64 tokens) are dominated by per-message fixed costs and scheduling noise (wide "
    "quartiles, worse when other jobs share the machine: see the load average above); compare medians within "
    "a size only.",
    "- Fused times measure Triton's interpreter (numpy, one program after another), not the kernels: they "
    "prove the kernels run across processes; their speed is for a GPU (scripts/gpu_check.sh).",
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--world", type=int, default=2)
    ap.add_argument("--reps", type=int, default=9)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    args = ap.parse_args()
    os.environ.setdefault("TRITON_INTERPRET", "1")
    loadavg = os.getloadavg()[0]
    pool = RankPool(args.world, gloo_timeout_s=120)
    try:
        results = summarize(pool.run(_job, TOKENS, args.reps, FUSED_TOKENS, timeout=1800))
    finally:
        pool.stop()
    doc = {"machine": describe(), "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "torch": torch.__version__, "world": args.world, "reps": args.reps, "loadavg": loadavg,
           "tokens": list(TOKENS), "hidden": H, "top_k": K, "experts": E, "results": results, "notes": NOTES}
    save_result(args.out, "ep_cpu", doc, write_md)


if __name__ == "__main__":
    main()
