"""GPU check for issue 6: the Triton W8A8 kernel compiled on CUDA vs exact references, then GPU-time
benchmarks against cuBLAS in the same run, and a tile-config sweep (decode and prefill shapes).

    python scripts/gpu_checks/ngemm.py [--out PREFIX] [--sweep-s 100]      (about 2.5 min on an H200)

Timing: each variant is captured `REPS` times in a CUDA graph and replayed, so the figures are GPU time,
not the ~30 us of Python and launcher work per eager call (the earlier eager figures, 0.03 ms whatever
the shape, measured that). Weights rotate through a pool larger than L2 (cold, as in decode), sized
per shape. Baselines: bf16 `F.linear` (cuBLAS; what the engine runs on a GPU) and `torch._int_mm`
(cuBLASLt IMMA; M > 16 only). Exits 1 on any mismatch, 2 without a CUDA device.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import time
from functools import partial

import torch
import torch.nn.functional as F

POOL_BYTES = 256 << 20  # > the 50 MB L2 of an H100/H200
REPS = 2  # graph-captured passes over the pool per replay
LLAMA8B = [(4096, 4096), (1024, 4096), (14336, 4096), (4096, 14336)]  # (N, K): q/o, k/v, gate/up, down


def check(M, N, K, w8a8_matmul, block=None) -> list[str]:
    g = torch.Generator(device="cuda").manual_seed(M * 7 + N)
    a = torch.randint(-128, 128, (M, K), dtype=torch.int8, device="cuda", generator=g)
    w = torch.randint(-128, 128, (N, K), dtype=torch.int8, device="cuda", generator=g)
    a[0], w[0] = -128, -128  # extremes
    acc = a.double() @ w.double().T  # [M, N] exact: |sum| << 2**53
    errs, tag = [], f"M={M} N={N} K={K} block={block}"
    if 128 * 128 * K < 2**24:  # unit scales: the fp32 output must be the exact integer
        y = w8a8_matmul(a, torch.ones(M, device="cuda"), w, torch.ones(N, device="cuda"), block=block)
        if not torch.equal(y.double(), acc):
            errs.append(f"{tag}: integer result not exact")
    sa, sw = torch.rand(M, device="cuda") * 1e-2, torch.rand(N, device="cuda") * 1e-3
    bias = torch.randn(N, device="cuda")
    ref = acc * (sa.double()[:, None] * sw.double()[None]) + bias.double()
    for dt, tol in ((torch.float32, 1e-5), (torch.bfloat16, 8e-3)):
        y = w8a8_matmul(a, sa, w, sw, bias, out_dtype=dt, block=block)
        err = ((y.double() - ref).abs() / (1 + ref.abs())).max().item()
        if not err < tol:
            errs.append(f"{tag} {dt}: max rel err {err:.2e} > {tol}")
    return errs


def gpu_ms(calls, replays=5) -> float:
    """Median GPU time of one call (ms): `calls` (one per pool entry) captured REPS times in a graph."""
    for c in calls[:2]:  # compile and warm outside the capture
        c()
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(REPS):
            for c in calls:
                c()
    g.replay()
    torch.cuda.synchronize()
    t0, t1, ts = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True), []
    for _ in range(replays):
        t0.record()
        g.replay()
        t1.record()
        t1.synchronize()
        ts.append(t0.elapsed_time(t1) / (REPS * len(calls)))
    del g
    return statistics.median(ts)


def _ratio(a: float, b: float) -> str:
    return "-" if a != a else f"{a / b:.2f}x"  # nan: the baseline does not run at this shape


def timed(calls) -> float:
    """gpu_ms, or nan with the error printed (one failing baseline must not cost the rest of the check)."""
    try:
        return gpu_ms(calls)
    except Exception as e:  # noqa: BLE001
        print(f"timing failed: {type(e).__name__}: {str(e)[:300]}")
        return float("nan")


def copy_bandwidth() -> float:
    """Achievable DRAM bandwidth (GB/s): a 1 GiB device-to-device copy reads and writes 2 GiB."""
    src = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    ms = gpu_ms([lambda: dst.copy_(src)])
    return 2 * src.numel() / ms / 1e6


class Shape:
    """Operands for one (M, N, K) with weight pools larger than L2, int8 and bf16."""

    def __init__(self, M, N, K):
        self.M, self.N, self.K = M, N, K
        n = max(2, -(-POOL_BYTES // (N * K)))
        self.a = torch.randint(-128, 128, (M, K), dtype=torch.int8, device="cuda")
        self.sa, self.sw = torch.rand(M, device="cuda"), torch.rand(N, device="cuda")
        self.w = [torch.randint(-128, 128, (N, K), dtype=torch.int8, device="cuda") for _ in range(n)]
        self.x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
        self.wb = [torch.randn(N, K, device="cuda", dtype=torch.bfloat16) for _ in range(n)]


def sweep_configs():
    """(decode?, block, warps, stages), likelier first. Prefill (M >= 256): tile shapes around
    128x128x128. Decode (M <= 16, BLOCK_M 16): BLOCK_N x BLOCK_K x warps x stages around the
    defaults (the first sweep, ngemm_gpu_NVIDIA_H200_sweep1.json, settled BLOCK_K and showed split-K losing)."""
    for bm, bn, bk, warps, stages in [(128, 128, 128, 8, 3), (64, 128, 128, 4, 4), (128, 256, 128, 8, 3),
                                      (128, 128, 64, 4, 4), (64, 64, 128, 4, 4), (128, 64, 128, 4, 4),
                                      (256, 128, 128, 8, 3), (128, 128, 128, 4, 4), (64, 256, 128, 8, 3)]:
        yield False, (bm, bn, bk), warps, stages
    for bn, bk, warps, stages in itertools.product((16, 32, 64), (512, 256), (4, 2, 8), (4, 3)):
        yield True, (16, bn, bk), warps, stages


def run_sweep(shapes, w8a8_matmul, deadline) -> list[dict]:
    """Time every config of `sweep_configs` on the shapes of its kind until `deadline`."""
    rows = []
    for decode, block, warps, stages in sweep_configs():
        for s in (s for s in shapes if (s.M <= 16) == decode):
            if time.time() > deadline:
                print(f"sweep: time budget spent after {len(rows)} timings")
                return rows
            try:
                ms = gpu_ms([partial(w8a8_matmul, s.a, s.sa, w, s.sw, block=block, warps=warps, stages=stages)
                             for w in s.w])
            except Exception as e:  # noqa: BLE001 - a config out of shared memory is skipped, not fatal
                print(f"sweep: {block} w{warps} s{stages} failed on M={s.M}: {type(e).__name__}")
                break
            rows.append({"M": s.M, "N": s.N, "K": s.K, "block": block, "warps": warps, "stages": stages, "ms": ms})
    return rows


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None, help="write PREFIX.json and PREFIX.md")
    ap.add_argument("--sweep-s", type=float, default=100.0, help="time budget of the config sweep (0: none)")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("ngemm gpu check: no CUDA device, skipped")
        return 2
    from tessera.kernels.ngemm.gemm_triton import default_config, w8a8_linear, w8a8_matmul

    start = time.time()
    errs = []
    cases = [(1, 4096, 4096, None), (5, 1000, 1000, None), (16, 1024, 4096, None), (37, 4096, 1000, None),
             (300, 14336, 4096, None), (3, 1000, 1000, (16, 16, 512)), (16, 1000, 14336, (16, 64, 256))]
    for M, N, K, block in cases:
        errs += check(M, N, K, w8a8_matmul, block)
    print(f"correctness: {len(cases) - len({e.split(':')[0] for e in errs})}/{len(cases)} cases ok")
    for e in errs:
        print("  MISMATCH", e)

    bw = copy_bandwidth()
    print(f"device-to-device copy: {bw:.0f} GB/s")
    shapes = [Shape(M, N, K) for M in (1, 16) for N, K in LLAMA8B]
    shapes += [Shape(M, N, K) for M in (256, 1024) for N, K in LLAMA8B[::2]]
    rows = []
    hdr = f"{'M':>5} {'N':>6} {'K':>6} {'w8a8 ms':>8} {'GB/s':>6} {'TOPS':>5} {'bf16 ms':>8} {'_int_mm':>8} {'linear':>8}"
    print(hdr)
    for s in shapes:
        ops, wbytes = 2 * s.M * s.N * s.K, s.N * s.K
        t = timed([partial(w8a8_matmul, s.a, s.sa, w, s.sw) for w in s.w])
        tb = timed([partial(F.linear, s.x, w) for w in s.wb])
        ti = timed([partial(torch._int_mm, s.a, w.T) for w in s.w]) if s.M > 16 else float("nan")
        # the engine's path: per-token quantization of bf16 activations + the GEMM (one bf16 weight scale)
        tl_ = timed([partial(w8a8_linear, s.x, w, s.sw) for w in s.w])
        r = {"M": s.M, "N": s.N, "K": s.K, "config": default_config(s.M, s.N), "w8a8_ms": t, "bf16_linear_ms": tb,
             "int_mm_ms": ti, "w8a8_linear_ms": tl_, "w8a8_GBps": wbytes / t / 1e6, "w8a8_TOPS": ops / t / 1e9}
        rows.append(r)
        print(f"{s.M:5d} {s.N:6d} {s.K:6d} {t:8.4f} {r['w8a8_GBps']:6.0f} {r['w8a8_TOPS']:5.0f} {tb:8.4f} {ti:8.4f} {tl_:8.4f}")

    sweep = run_sweep(shapes, w8a8_matmul, time.time() + args.sweep_s) if args.sweep_s > 0 else []
    best = {}
    for r in sweep:
        k = (r["M"], r["N"], r["K"])
        if k not in best or r["ms"] < best[k]["ms"]:
            best[k] = r
    lines = [f"# Triton W8A8 on {torch.cuda.get_device_name()} (GPU time, CUDA graphs, weights cold)", "",
             f"Device-to-device copy: {bw:.0f} GB/s. bf16 = `F.linear` (cuBLAS); `_int_mm` = cuBLASLt IMMA (M > 16).",
             "", "| M | N | K | w8a8 ms | GB/s of weights | vs bf16 | vs _int_mm | quantize + w8a8 ms | vs bf16 | "
             "best swept (BM,BN,BK) warps stages | ms |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        b = best.get((r["M"], r["N"], r["K"]))
        r["best_swept"] = b
        lines.append(f"| {r['M']} | {r['N']} | {r['K']} | {r['w8a8_ms']:.4f} | {r['w8a8_GBps']:.0f} | "
                     f"{r['bf16_linear_ms'] / r['w8a8_ms']:.2f}x | {_ratio(r['int_mm_ms'], r['w8a8_ms'])} | "
                     f"{r['w8a8_linear_ms']:.4f} | {r['bf16_linear_ms'] / r['w8a8_linear_ms']:.2f}x | "
                     + (f"{b['block']} {b['warps']} {b['stages']} | {b['ms']:.4f} |" if b else "- | - |"))
    print("\n".join(lines))
    if args.out:
        json.dump({"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "copy_GBps": bw,
                   "rows": rows, "sweep": sweep}, open(args.out + ".json", "w"), indent=1)
        open(args.out + ".md", "w").write("\n".join(lines) + "\n")
    print(f"ngemm gpu check: {'FAIL' if errs else 'OK'} in {time.time() - start:.0f} s "
          f"on {torch.cuda.get_device_name()}")
    return 1 if errs else 0


if __name__ == "__main__":
    sys.exit(main())
