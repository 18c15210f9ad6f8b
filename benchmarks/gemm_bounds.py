"""How much faster than the best int8 library can any W8A8 kernel be on this machine? From a `bench_gemm.py`
JSON: for each shape and small M, the library's time against the larger of two bounds measured in the same
run, streaming the int8 weights at the DRAM probe's bandwidth and doing 2*M*N*K ops at the int8 probe's
rate. `ceiling` = library time / bound: a kernel at 100 % of the bound is that much faster, no more.

    python benchmarks/gemm_bounds.py benchmarks/results/gemm_epyc_avx2.json [--out PREFIX]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_gemm import LIBS_PREPACKED  # noqa: E402 - the same "best prepacked library" as the benchmark's table


def bounds_table(d: dict, ms=(1, 4, 16), mode="cold") -> tuple[list[dict], str]:
    mach = d["machine"]
    bw, peak = mach["dram_read_gbs"], mach.get("int8_peak_gops") or mach["vnni_peak_gops"]  # (older runs' key)
    cells = defaultdict(dict)  # (shape, N, K, M) -> path -> row
    for r in d["rows"]:
        if r["M"] in ms and r["mode"] == mode:
            cells[(r["shape"], r["N"], r["K"], r["M"])][r["path"]] = r
    rows, lines = [], [
        f"Bounds from the run's own probes: DRAM read {bw:.1f} GB/s, int8 {peak:.0f} GOP/s ({mode} weights).", "",
        "| shape | M | best library ms | DRAM bound ms | int8-peak bound ms | library at % of bound | ceiling vs library "
        "| Tessera W8A8 vs library |", "|---|---|---|---|---|---|---|---|"]
    for (shape, N, K, M), paths in sorted(cells.items(), key=lambda kv: (kv[0][0], kv[0][3])):
        libs = {p: r for p, r in paths.items() if p in LIBS_PREPACKED}
        if not libs or "tessera W8A8" not in paths:
            continue
        lib, best = min(libs.items(), key=lambda kv: kv[1]["median_ms"])
        t_dram, t_ops = N * K / bw / 1e6, 2 * M * N * K / peak / 1e6  # ms
        bound, ours = max(t_dram, t_ops), paths["tessera W8A8"]["median_ms"]
        row = {"shape": shape, "M": M, "library": lib, "library_ms": best["median_ms"], "dram_bound_ms": t_dram,
               "ops_bound_ms": t_ops, "ceiling": best["median_ms"] / bound, "tessera": best["median_ms"] / ours}
        rows.append(row)
        lines.append(f"| {shape} | {M} | {best['median_ms']:.3f} ({lib.replace('qlinear_dynamic ', '')}) | {t_dram:.3f} | {t_ops:.3f} | "
                     f"{100 * bound / best['median_ms']:.0f} % | {row['ceiling']:.2f}x | {row['tessera']:.2f}x |")
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
