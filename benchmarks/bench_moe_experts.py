"""Which expert backend should the CPU use? `sorted` (one GEMM pair per non-empty expert) vs
`grouped_mm` (`torch._grouped_mm`, one call for all experts), and, for compiled graphs, `gathered`
under `torch.compile` (one fused gather-and-reduce per (token, slot) pair; up to `--gathered-max`
tokens), timed interleaved in one run, outputs checked equal first.

    python benchmarks/bench_moe_experts.py [--tokens 1,8,32,256,2048] [--reps 30]

Shapes: the embedded MoE reasoner (hidden 256, 8 experts of width 256, top-2) and one Mixtral-8x7B-shaped
layer scaled down 4x (hidden 1024, 8 experts of width 3584, top-2). Writes
benchmarks/results/moe_experts_cpu.{json,md}: median ms per call, spread (min-max), sorted / grouped_mm and
grouped_mm / gathered.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from functools import partial
from pathlib import Path

import torch
from machine import describe

from tessera.layers import experts as X

SHAPES = {"embedded (H 256, E 8 x 256, top-2)": (256, 256, 8, 2),
          "Mixtral/4 (H 1024, E 8 x 3584, top-2)": (1024, 3584, 8, 2)}
OUT = Path(__file__).resolve().parent / "results"




def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", default="1,8,32,256,2048")
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--gathered-max", type=int, default=256, help="time `gathered` up to this many tokens")
    ap.add_argument("--out", default=str(OUT / "moe_experts_cpu"))
    args = ap.parse_args()
    rows = []
    gathered = torch.compile(X.experts_gathered, dynamic=True)  # as the compiled decode step runs it
    for name, (H, ffn, E, k) in SHAPES.items():
        g = torch.Generator().manual_seed(0)
        gate_up, down = torch.randn(E, 2 * ffn, H, generator=g) * 0.02, torch.randn(E, H, ffn, generator=g) * 0.02
        for T in (int(t) for t in args.tokens.split(",")):
            x = torch.randn(T, H, generator=g)
            ids = torch.stack([torch.randperm(E, generator=g)[:k] for _ in range(T)])
            w = torch.rand(T, k, generator=g)
            ref = X.run("sorted", x, ids, w, gate_up, down)
            torch.testing.assert_close(X.run("grouped_mm", x, ids, w, gate_up, down), ref, atol=1e-4, rtol=1e-4)
            inputs = (x, ids, w, gate_up, down)
            fns = {b: partial(X.run, b, *inputs) for b in ("sorted", "grouped_mm")}
            if T <= args.gathered_max:
                with torch.no_grad():
                    torch.testing.assert_close(gathered(*inputs), ref, atol=1e-4, rtol=1e-4)
                fns["gathered"] = partial(gathered, *inputs)
            times = {b: [] for b in fns}
            with torch.no_grad():
                for _ in range(args.reps):  # interleaved: the backends see the same machine state
                    for b, fn in fns.items():
                        t0 = time.perf_counter()
                        fn()
                        times[b].append((time.perf_counter() - t0) * 1e3)
            med = {b: statistics.median(v) for b, v in times.items()}
            rows.append({"shape": name, "tokens": T, **{f"{b}_ms": med[b] for b in med},
                         **{f"{b}_spread": [min(v), max(v)] for b, v in times.items()},
                         "sorted_over_grouped_mm": med["sorted"] / med["grouped_mm"],
                         "grouped_mm_over_gathered": med["grouped_mm"] / med["gathered"] if "gathered" in med else None})
            print(f"{name:40s} T={T:5d}  " + "  ".join(f"{b} {m:8.3f} ms" for b, m in med.items()), flush=True)
    meta = {"machine": describe(), "torch": torch.__version__, "reps": args.reps,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    Path(args.out + ".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    md = [f"# Expert backends on the CPU: sorted vs torch._grouped_mm vs gathered ({meta['machine']})", "",
          f"{meta['date']}, torch {meta['torch']}, fp32, {args.reps} interleaved calls each; median ms (min-max). "
          "`python benchmarks/bench_moe_experts.py`.", "",
          "| shape | tokens | sorted ms | grouped_mm ms | gathered, compiled ms | sorted / grouped_mm | "
          "grouped_mm / gathered |", "|---|---:|---:|---:|---:|---:|---:|"]

    def cell(r, b):
        return f"{r[b + '_ms']:.3f} ({r[b + '_spread'][0]:.3f}-{r[b + '_spread'][1]:.3f})" if b + "_ms" in r else "-"

    for r in rows:
        ratio = f"{r['grouped_mm_over_gathered']:.2f}" if r["grouped_mm_over_gathered"] else "-"
        md.append(f"| {r['shape']} | {r['tokens']} | {cell(r, 'sorted')} | {cell(r, 'grouped_mm')} | "
                  f"{cell(r, 'gathered')} | {r['sorted_over_grouped_mm']:.2f} | {ratio} |")
    Path(args.out + ".md").write_text("\n".join(md) + "\n")


if __name__ == "__main__":
    main()
