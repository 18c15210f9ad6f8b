"""The most continuous batching can gain over static batches when both run the same number of rows: the
ratio of their decode-step counts, from the requests' output lengths alone (no model, no timing).

A static batch runs until its longest request is done; continuous batching refills a finished row's place at
once, so with every request queued at the start (`bench_serve.py`'s burst) it needs only as many steps as a
greedy packing of the lengths into `--batch` rows. If a decode step cost the same at every batch size, the
throughput ratio would equal this step ratio; on a CPU a fuller step costs more, so the measured ratio lies
below it. Lengths: each problem's reference solution in tokens (the embedded models write it when correct),
the same problems `bench_serve.py` draws (its `draw_problems`: seeded, held-out, difficulty uniform in the range).

    python benchmarks/serve_step_bound.py --out benchmarks/results/serve_step_bound
"""

from __future__ import annotations

import argparse
import heapq
import json
import random
from pathlib import Path


def step_counts(lengths: list[int], batch: int) -> tuple[int, int]:
    """(static steps, continuous steps) for requests in arrival order, at most `batch` running."""
    static = sum(max(lengths[i : i + batch]) for i in range(0, len(lengths), batch))
    ends: list[int] = []  # finishing step of each running row
    for n in lengths:  # FIFO: the next request takes the first row to free up
        start = heapq.heappop(ends) if len(ends) == batch else 0
        heapq.heappush(ends, start + n)
    return static, max(ends)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", default="32,64,128,512")
    ap.add_argument("--difficulties", default="3-12,2-16", help="comma-separated inclusive ranges")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="benchmarks/results/serve_step_bound")
    args = ap.parse_args()

    from bench_serve import draw_problems

    from tessera.engine.engine import resolve_model_path
    from tessera.tokenizer import Tokenizer

    tok = Tokenizer(resolve_model_path("dense"))
    rows = []
    for rng_text in args.difficulties.split(","):
        lo, hi = map(int, rng_text.split("-"))
        for n in map(int, args.requests.split(",")):
            problems = draw_problems(random.Random(args.seed), n, lo, hi)  # bench_serve.py's requests
            lengths = [len(tok.encode(p.solution)) for p in problems]
            static, cont = step_counts(lengths, args.batch)
            rows.append({"difficulties": [lo, hi], "requests": n, "batch": args.batch, "static_steps": static,
                         "continuous_steps": cont, "bound": static / cont, "min_len": min(lengths),
                         "max_len": max(lengths), "mean_len": sum(lengths) / n})
            print(f"difficulty {lo}-{hi}, {n} requests: static {static} steps, continuous {cont}, "
                  f"bound {static / cont:.2f}x", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"seed": args.seed, "rows": rows}, indent=2) + "\n")
    md = ["# Continuous vs static batches: the step-count bound", "",
          f"Output lengths of the reasoning task's reference solutions (tokens), batches of {args.batch}, every "
          "request queued at the start; computed, not timed (`python benchmarks/serve_step_bound.py`). "
          "`bound` = static steps / continuous steps: the throughput ratio if a step cost the same at every "
          "batch size.", "",
          "| difficulties | requests | output tokens min / mean / max | static steps | continuous steps | bound |",
          "|---|---:|---|---:|---:|---:|"]
    md += [f"| {r['difficulties'][0]}-{r['difficulties'][1]} | {r['requests']} | {r['min_len']} / "
           f"{r['mean_len']:.0f} / {r['max_len']} | {r['static_steps']} | {r['continuous_steps']} | "
           f"{r['bound']:.2f}x |" for r in rows]
    out.with_suffix(".md").write_text("\n".join(md) + "\n")


if __name__ == "__main__":
    main()
