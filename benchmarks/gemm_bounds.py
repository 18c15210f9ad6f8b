"""How much faster than the best int8 library can any W8A8 kernel be on this machine? From a `bench_gemm.py`
JSON: for each shape and small M, the best prepacked library's time (the benchmark's own summary) against
the larger of two bounds measured in the same run, streaming the int8 weights at the DRAM probe's bandwidth and doing 2*M*N*K ops at the int8 probe's
rate. `ceiling` = library time / bound: a kernel at 100 % of the bound is that much faster, no more.

    python benchmarks/gemm_bounds.py benchmarks/results/gemm_epyc_avx2.json [--out PREFIX]
"""

from __future__ import annotations

import argparse
import json


def bounds_table(d: dict, ms=(1, 4, 16), mode="cold") -> tuple[list[dict], str]:
    """From the run's `summary` (bench_gemm's best prepacked library and its ratio per cell) and `rows`
    (each shape's N, K)."""
    mach = d["machine"]
    bw, peak = mach["dram_read_gbs"], mach.get("int8_peak_gops") or mach["vnni_peak_gops"]  # (older runs' key)
    nk = {r["shape"]: (r["N"], r["K"]) for r in d["rows"]}
    rows, lines = [], [
        f"Bounds from the run's own probes: DRAM read {bw:.1f} GB/s, int8 {peak:.0f} GOP/s ({mode} weights).", "",
        "| shape | M | best library ms | DRAM bound ms | int8-peak bound ms | library at % of bound | ceiling vs library "
        "| Tessera W8A8 vs library |", "|---|---|---|---|---|---|---|---|"]
    for s in sorted((s for s in d["summary"] if s["M"] in ms and s["mode"] == mode), key=lambda s: (s["shape"], s["M"])):
        (N, K), M, lib, lib_ms = nk[s["shape"]], s["M"], s["best_prepacked"], s["best_prepacked_ms"]
        t_dram, t_ops = N * K / bw / 1e6, 2 * M * N * K / peak / 1e6  # ms
        bound = max(t_dram, t_ops)
        row = {"shape": s["shape"], "M": M, "library": lib, "library_ms": lib_ms, "dram_bound_ms": t_dram,
               "ops_bound_ms": t_ops, "ceiling": lib_ms / bound, "tessera": s["w8a8_speedup_vs_best_prepacked"]}
        rows.append(row)
        lines.append(f"| {s['shape']} | {M} | {lib_ms:.3f} ({lib.replace('qlinear_dynamic ', '')}) | {t_dram:.3f} | "
                     f"{t_ops:.3f} | {100 * bound / lib_ms:.0f} % | {row['ceiling']:.2f}x | {row['tessera']:.2f}x |")
    return rows, "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("json", help="a bench_gemm.py result")
    ap.add_argument("--out", default=None, help="write PREFIX.json and PREFIX.md")
    args = ap.parse_args()
    rows, md = bounds_table(json.load(open(args.json)))
    print(md)
    if args.out:
        json.dump(rows, open(args.out + ".json", "w"), indent=1)
        open(args.out + ".md", "w").write(f"# W8A8 ceilings from {args.json}\n\n" + md)


if __name__ == "__main__":
    main()
