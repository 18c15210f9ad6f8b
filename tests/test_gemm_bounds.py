"""benchmarks/gemm_bounds.py: the ceiling is the library's time over the larger of the DRAM and int8 bounds."""

import pytest
from bench_modules import load_benchmark

bench_gemm, gemm_bounds = load_benchmark("bench_gemm"), load_benchmark("gemm_bounds")


def _row(path, M, ms, N=1000, K=2000, mode="cold"):
    return {"shape": "s", "N": N, "K": K, "M": M, "path": path, "mode": mode, "median_ms": ms, "min_ms": ms,
            "gops": 2 * M * N * K / ms / 1e6, "weight_bytes": N * K}


def test_ceiling_from_the_larger_bound():
    # 2 MB of weights at 10 GB/s = 0.2 ms; 2*M*N*K ops at 40 GOP/s = 0.1 ms at M = 1, 1.6 ms at M = 16
    info = {"dram_read_gbs": 10.0, "int8_peak_gops": 40.0}
    rows = [_row("qlinear_dynamic fbgemm", 1, 0.30), _row("qlinear_dynamic x86", 1, 0.25), _row("tessera W8A8", 1, 0.20),
            _row("qlinear_dynamic x86", 16, 2.0), _row("tessera W8A8", 16, 2.5)]
    rows += [_row(p, M, 1.0) for M in (1, 16) for p in ("tessera W4A8 g128", "fp32 torch.mm")]
    rows += [_row(p, 4, 1.0, mode="hot") for p in ("tessera W8A8", "tessera W4A8 g128", "fp32 torch.mm", "qlinear_dynamic x86")]
    d = {"machine": info, "rows": rows, "summary": bench_gemm.analyze(rows, info)}  # as bench_gemm writes it
    rows, md = gemm_bounds.bounds_table(d)
    assert [(r["M"], r["library"]) for r in rows] == [(1, "qlinear_dynamic x86"), (16, "qlinear_dynamic x86")]
    assert rows[0]["ceiling"] == pytest.approx(0.25 / 0.2) and rows[0]["tessera"] == pytest.approx(1.25)
    assert rows[1]["ceiling"] == pytest.approx(2.0 / 1.6) and rows[1]["tessera"] == pytest.approx(0.8)
    assert "| s | 16 |" in md
