"""AVX2 W8A8: the sign-trick kernels against the exact bit-7 split they replace, and fbgemm, in one run.

    python benchmarks/bench_w8a8_avx2_sign.py   (~2 min; needs a CPU with AVX2)

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

from tessera.kernels import cpu_isa
from tessera.kernels import int8_gemm as G
from tessera.quant.weights import quantize_weight_int8


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ms", type=lambda v: [int(m) for m in v.split(",")], default=[1, 16, 256])
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "w8a8_avx2_sign"))
    args = ap.parse_args()
    if "avx2" not in cpu_isa.supported_isas():
        raise SystemExit("this CPU has no AVX2")
    torch.manual_seed(0)
    N = K = 4096
    q, s = quantize_weight_int8(torch.randn(N, K) * 0.02)
    sign = [G.pack_int8(q.clone(), s) for _ in range(40)]  # 40 x 16 MiB: larger than any L3 here
    split = [G.pack_int8(q.clone(), s) for _ in range(40)]
    for p in split:
        p.sign_ok = False  # as if a weight held -128
    torch.backends.quantized.engine = "fbgemm"
    qw = torch._make_per_channel_quantized_tensor(q, s.double(), torch.zeros(N, dtype=torch.long), 0)
    fb = [torch.ops.quantized.linear_prepack(qw, None) for _ in range(40)]
    rows = []
    for M in args.ms:
        x = torch.randn(M, K)
        assert torch.equal(G.int8_linear(x, sign[0], backend="avx2"), G.int8_linear(x, split[0], backend="avx2"))
        paths = {"tessera W8A8 sign": lambda i, x=x: G.int8_linear(x, sign[i % 40], backend="avx2"),
                 "tessera W8A8 split": lambda i, x=x: G.int8_linear(x, split[i % 40], backend="avx2"),
                 "qlinear_dynamic fbgemm": lambda i, x=x: torch.ops.quantized.linear_dynamic(x, fb[i % 40], True)}
        ts = {p: [] for p in paths}
        for i in range(-2, 40 if M < 256 else 8):  # two warm-up rounds
            for p, fn in paths.items():
                t = time.perf_counter()
                fn(i)
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
