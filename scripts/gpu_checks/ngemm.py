"""GPU check for issue 6: the Triton W8A8 kernel compiled on CUDA vs exact references, and a short
timing against torch._int_mm (cuBLASLt IMMA). Exits 1 on any mismatch, 2 without a CUDA device.

    python scripts/gpu_checks/ngemm.py        (about 30 s on an H100)
"""

from __future__ import annotations

import functools
import sys
import time

import torch


def check(M, N, K, w8a8_matmul) -> list[str]:
    g = torch.Generator(device="cuda").manual_seed(M * 7 + N)
    a = torch.randint(-128, 128, (M, K), dtype=torch.int8, device="cuda", generator=g)
    w = torch.randint(-128, 128, (N, K), dtype=torch.int8, device="cuda", generator=g)
    a[0], w[0] = -128, -128  # extremes
    acc = a.double() @ w.double().T  # [M, N] exact: |sum| << 2**53
    errs = []
    if 128 * 128 * K < 2**24:  # unit scales: the fp32 output must be the exact integer
        y = w8a8_matmul(a, torch.ones(M, device="cuda"), w, torch.ones(N, device="cuda"))
        if not torch.equal(y.double(), acc):
            errs.append(f"M={M} N={N} K={K}: integer result not exact")
    sa, sw = torch.rand(M, device="cuda") * 1e-2, torch.rand(N, device="cuda") * 1e-3
    bias = torch.randn(N, device="cuda")
    ref = acc * (sa.double()[:, None] * sw.double()[None]) + bias.double()
    for dt, tol in ((torch.float32, 1e-5), (torch.bfloat16, 8e-3)):
        y = w8a8_matmul(a, sa, w, sw, bias, out_dtype=dt)
        err = ((y.double() - ref).abs() / (1 + ref.abs())).max().item()
        if not err < tol:
            errs.append(f"M={M} N={N} K={K} {dt}: max rel err {err:.2e} > {tol}")
    return errs


def bench(fn, iters=30) -> float:
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    t0, t1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    t0.record()
    for _ in range(iters):
        fn()
    t1.record()
    torch.cuda.synchronize()
    return t0.elapsed_time(t1) / iters


def main() -> int:
    if not torch.cuda.is_available():
        print("ngemm gpu check: no CUDA device, skipped")
        return 2
    from tessera.kernels.int8_gemm_triton import w8a8_matmul

    start = time.time()
    errs = []
    for M, N, K in [(1, 4096, 4096), (5, 1000, 1000), (16, 1024, 4096), (37, 4096, 1000), (300, 14336, 4096)]:
        errs += check(M, N, K, w8a8_matmul)
    print(f"correctness: {5 - len({e.split(':')[0] for e in errs})}/5 shapes ok")
    for e in errs:
        print("  MISMATCH", e)
    print(f"{'M':>5} {'N':>6} {'K':>6} {'triton ms':>10} {'TOPS':>6} {'_int_mm ms':>10} {'TOPS':>6}")
    for M, N, K in [(1, 4096, 4096), (16, 4096, 4096), (32, 4096, 4096), (256, 14336, 4096), (1024, 4096, 4096)]:
        a = torch.randint(-128, 128, (M, K), dtype=torch.int8, device="cuda")
        w = torch.randint(-128, 128, (N, K), dtype=torch.int8, device="cuda")
        sa, sw = torch.rand(M, device="cuda"), torch.rand(N, device="cuda")
        t = bench(functools.partial(w8a8_matmul, a, sa, w, sw))
        # cuBLASLt wants B column-major: the transpose view of [N, K]; it needs M > 16 on CUDA.
        ti = bench(functools.partial(torch._int_mm, a, w.T)) if M > 16 else float("nan")
        ops = 2 * M * N * K / 1e9
        print(f"{M:5d} {N:6d} {K:6d} {t:10.4f} {ops / t:6.0f} {ti:10.4f} {ops / ti:6.0f}")
    print(f"ngemm gpu check: {'FAIL' if errs else 'OK'} in {time.time() - start:.0f} s "
          f"on {torch.cuda.get_device_name()}")
    return 1 if errs else 0


if __name__ == "__main__":
    sys.exit(main())
