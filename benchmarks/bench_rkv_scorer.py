"""R-KV's scorer alone, per layer and compression: the full-matrix definition, the CPU row-block path, and the
scorer as it was at an earlier commit (`--before`, read with `git show`), in one run.

One layer's `score()` for R rows of N held tokens (R = 2, GQA 4/2 heads of 64, as the embedded model):
what a compression step costs per layer before top-k and the gather. The engine-level share of decode time
is `bench_rkv_efficiency.py --variants`. Runs are interleaved (before, reference, blocked, before, ...) so
that load on a shared machine hits all alike; medians and [min-max].

    python benchmarks/bench_rkv_scorer.py --before 233d276 --out benchmarks/results/rkv_scorer_cpu
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import time
import types
from pathlib import Path

import torch
from machine import describe

from tessera.kv.presses.rkv import RKVPress
from tessera.kv.presses.scorer import Candidates


def before_press(commit: str, budget: int):
    """RKVPress as `tessera/kv/presses/rkv.py` was at `commit`, without registering it again."""
    src = subprocess.run(["git", "show", f"{commit}:tessera/kv/presses/rkv.py"], capture_output=True, text=True,
                         check=True, timeout=30).stdout
    mod = types.ModuleType("rkv_before")
    exec(src.replace('@register_press("rkv")\n', ""), mod.__dict__)  # noqa: S102 - our own file from git history
    return mod.RKVPress(budget=budget)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", default=None, help="git commit whose scorer is the baseline (optional)")
    ap.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")], default=[1152, 2176, 3200],
                    help="held tokens N (budget + buffer: 1K, 2K, 3K budgets with buffer 128)")
    ap.add_argument("--rows", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="benchmarks/results/rkv_scorer_cpu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    H, Hq, D, W, R = 2, 4, 64, 8, args.rows
    res = {"machine": describe("cpu"), "rows": R, "kv_heads": H, "q_heads": Hq, "head_dim": D, "before": args.before,
           "repeats": args.repeats, "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()), "sizes": []}
    for N in args.sizes:
        g = torch.Generator().manual_seed(N)
        keys, q = torch.randn(R, H, N, D, generator=g), torch.randn(R, Hq, W, D, generator=g)
        lens = torch.full((R,), N)
        slot = torch.arange(N)[None]
        c = Candidates(keys, q, None, lens, slot < N, slot < N - W, None)
        presses = {"reference (full matrix)": RKVPress(budget=N - 128, impl="reference"),
                   "blocked (CPU path)": RKVPress(budget=N - 128, impl="blocked")}
        if args.before:
            presses = {f"before ({args.before})": before_press(args.before, N - 128), **presses}
        times = {k: [] for k in presses}
        for p in presses.values():
            p.score(c)  # warm-up
        for _ in range(args.repeats):
            for k, p in presses.items():
                t0 = time.perf_counter()
                p.score(c)
                times[k].append(1e3 * (time.perf_counter() - t0))
        base = statistics.median(next(iter(times.values())))
        res["sizes"].append({"n": N, "ms": {k: {"median": statistics.median(v), "min": min(v), "max": max(v),
                                                 "speedup_vs_first": base / statistics.median(v)} for k, v in times.items()}})
        print(N, {k: round(statistics.median(v), 1) for k, v in times.items()}, flush=True)
    out = Path(args.out)
    out.with_suffix(".json").write_text(json.dumps(res, indent=2) + "\n")
    names = list(res["sizes"][0]["ms"])
    md = [f"# R-KV scorer per layer and compression ({res['machine']})", "",
          (f"`score()` of one layer for {R} rows, {H} KV heads / {Hq} query heads of {D}, window {W}; "
           f"{args.repeats} interleaved runs, median [min-max] ms, speed-up against the first column. "
           f"{res['date_utc']} UTC, shared machine. Written by `benchmarks/bench_rkv_scorer.py`."), "",
          "| held tokens N | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for sz in res["sizes"]:
        md.append(f"| {sz['n']} | " + " | ".join(
            f"{m['median']:.1f} [{m['min']:.1f}-{m['max']:.1f}] ({m['speedup_vs_first']:.2f}x)" for m in sz["ms"].values()) + " |")
    out.with_suffix(".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
