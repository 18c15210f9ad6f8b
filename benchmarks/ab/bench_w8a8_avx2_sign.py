"""AVX2 W8A8: the sign-trick kernels against the exact bit-7 split they replace, and fbgemm, in one run.

    python benchmarks/ab/bench_w8a8_avx2_sign.py   (~2 min; needs a CPU with AVX2)

Both Tessera kernels compute the same integers (asserted below); the split runs when the packed weight
holds -128 (`PackedInt8Weight.sign_ok` False), which this script forces on a copy. Cold: a pool of 40
distinct 4096x4096 weights (640 MiB), called in turn, interleaved call by call across the three paths.
Writes benchmarks/results/w8a8_avx2_sign.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
from common import import_bench_gemm

from tessera.kernels.ngemm import cpu_isa


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ms", type=lambda v: [int(m) for m in v.split(",")], default=[1, 16, 256])
    ap.add_argument("--out", default=str(Path(__file__).parents[1] / "results" / "w8a8_avx2_sign"))
    args = ap.parse_args()
    if "avx2" not in cpu_isa.supported_isas():
        raise SystemExit("this CPU has no AVX2")
    torch.manual_seed(0)
    N = K = 4096
    w = torch.randn(N, K) * 0.02
    lib = import_bench_gemm().paths(None, "avx2")  # bench_gemm's preparation and call of each path, so both benchmarks time the same
    prep8, copy8, call8, _ = lib["tessera W8A8"]
    prepfb, copyfb, callfb, _ = lib["qlinear_dynamic fbgemm"]
    pw, fb = prep8(w), prepfb(w)
    pools = {"tessera W8A8 sign": [pw] + [copy8(pw) for _ in range(39)],  # 40 x 16 MiB: larger than any L3 here
             "tessera W8A8 split": [copy8(pw) for _ in range(40)],
             "qlinear_dynamic fbgemm": [fb] + [copyfb(fb) for _ in range(39)]}
    for st in pools["tessera W8A8 split"]:
        st.sign_ok = False  # as if the weight held -128
    calls = {"tessera W8A8 sign": call8, "tessera W8A8 split": call8, "qlinear_dynamic fbgemm": callfb}
    rows = []
    for M in args.ms:
        x = torch.randn(M, K)
        fns = {p: [calls[p](st, x) for st in pools[p]] for p in calls}
        assert torch.equal(fns["tessera W8A8 sign"][0](), fns["tessera W8A8 split"][0]())  # same integers
        ts = {p: [] for p in fns}
        for i in range(-2, 40 if M < 256 else 8):  # two warm-up rounds
            for p, fs in fns.items():
                t = time.perf_counter()
                fs[i % 40]()
                if i >= 0:
                    ts[p].append((time.perf_counter() - t) * 1e3)
        med = {p: statistics.median(v) for p, v in ts.items()}
        row = {"M": M, "N": N, "K": K, "median_ms": med, "min_ms": {p: min(v) for p, v in ts.items()},
               "sign_vs_split": med["tessera W8A8 split"] / med["tessera W8A8 sign"],
               "sign_vs_fbgemm": med["qlinear_dynamic fbgemm"] / med["tessera W8A8 sign"]}
        rows.append(row)
        print(json.dumps(row), flush=True)
    info = {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime())}
    out = Path(args.out)
    out.with_suffix(".json").write_text(json.dumps({"machine": info, "rows": rows}, indent=1))
    lines = [f"# AVX2 W8A8: sign-trick vs bit-7 split kernels ({info['cpu']}, {info['threads']} threads, "
             f"{info['date_utc']} UTC)", "",
             "4096x4096, cold (40 distinct weights in turn), interleaved; median ms (min). Same integers from both kernels.",
             "", "| M | sign | split | fbgemm `linear_dynamic` | sign vs split | sign vs fbgemm |", "|---|---|---|---|---|---|"]
    for r in rows:
        m, n = r["median_ms"], r["min_ms"]
        cells = [f"{m[p]:.3f} ({n[p]:.3f})" for p in ("tessera W8A8 sign", "tessera W8A8 split", "qlinear_dynamic fbgemm")]
        lines.append(f"| {r['M']} | " + " | ".join(cells) + f" | {r['sign_vs_split']:.2f}x | {r['sign_vs_fbgemm']:.2f}x |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
