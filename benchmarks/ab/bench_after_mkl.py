"""What a call pays for the call before it: Tessera W8A8 (M = 1, 4096x4096, cold) timed alone, right
after an MKL pack call, and after other things in between, in one run.

    python benchmarks/ab/bench_after_mkl.py --mkl .../libmkl_rt.so.3

Found while benchmarking on an AVX2 EPYC (docs/ngemm.md, "2026-11-27 (evening)"): the call after MKL's
ran ~0.3 ms slower whichever library it was, a sleep did not help, and writing 16 MB of memory before
the call reproduced it without MKL, so it is the write-back of dirty cache lines the previous call left.
Writes benchmarks/results/after_mkl.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from common import import_bench_gemm


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mkl", required=True, help="path to libmkl_rt.so (pip download mkl; unzip the wheel)")
    ap.add_argument("--calls", type=int, default=30)
    ap.add_argument("--out", default=str(Path(__file__).parents[1] / "results" / "after_mkl"))
    args = ap.parse_args()
    N = K = 4096
    torch.manual_seed(0)
    w, x = torch.randn(N, K) * 0.02, torch.randn(1, K)
    bench_gemm = import_bench_gemm()
    lib = bench_gemm.paths(bench_gemm.MklPack(args.mkl, torch.get_num_threads()), "avx2")
    fns = {}
    for name in ("MKL pack (int only)", "tessera W8A8"):
        prep, copy, call, _ = lib[name]
        st = prep(w)
        fns[name] = [call(s, x) for s in [st] + [copy(st) for _ in range(39)]]  # 40 x 16 MiB: cold
    mkl, ours = fns["MKL pack (int only)"], fns["tessera W8A8"]
    small, buf = torch.randn(256, 256), torch.zeros(16 << 20, dtype=torch.uint8)

    def timed(before) -> float:
        """Median ms of our call, each preceded by before(i)."""
        ts = []
        for i in range(-2, args.calls):
            before(i)
            t = time.perf_counter()
            ours[i % 40]()
            if i >= 0:
                ts.append((time.perf_counter() - t) * 1e3)
        return statistics.median(ts)

    cases = {
        "alone (our previous call before it)": lambda i: None,
        "right after an MKL call": lambda i: mkl[i % 40](),
        "after MKL, then a 20 ms sleep": lambda i: (mkl[i % 40](), time.sleep(0.02)),
        "after MKL, then a 256x256 torch.mm": lambda i: (mkl[i % 40](), torch.mm(small, small)),
        "after MKL, then another of our calls": lambda i: (mkl[i % 40](), ours[(i + 7) % 40]()),
        "no MKL: after writing 16 MB (fill_)": lambda i: buf.fill_(i & 1),
        "no MKL: after reading 16 MB (sum)": lambda i: buf.sum(dtype=torch.int64),
    }
    rows = {name: timed(before) for name, before in cases.items()}
    for name, ms in rows.items():
        print(f"{name:40s} {ms:.3f} ms", flush=True)
    info = bench_gemm.machine_info()
    out = Path(args.out)
    out.with_suffix(".json").write_text(json.dumps({"machine": info, "median_ms": rows}, indent=1))
    base = rows["alone (our previous call before it)"]
    md = [f"# Tessera W8A8, M = 1, 4096x4096 cold: what the previous call costs ({info['cpu']}, {info['threads']} "
          f"threads, {info['date_utc']} UTC)", "", "| before our call | median ms | vs alone |", "|---|---|---|"]
    md += [f"| {name} | {ms:.3f} | {ms - base:+.3f} ms |" for name, ms in rows.items()]
    out.with_suffix(".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
