"""The overlap time model obeys the bounds any overlap schedule must obey."""

import pytest

from tessera.distributed import perfmodel as pm


@pytest.mark.parametrize("fn", [pm.ag_gemm, pm.gemm_rs])
@pytest.mark.parametrize("m", [256, 4096, 65536])
def test_overlap_bounds(fn, m):
    for c in (pm.H800x8, pm.H100x8, pm.L20x8):
        t = fn(c, pm.Shape(m=m, n=3696, k=8192))
        assert t["sequential"] == pytest.approx(t["t_gemm"] + t["t_comm"])
        for k in ("decomposed", "fused"):
            assert t[k] >= max(t["t_gemm"], t["t_comm"])  # overlap hides at most the shorter one
        assert 1.0 < pm.speedups(t)["fused"] <= 2.0  # never more than 2x over sequential


def test_fused_gains_most_when_comm_matches_compute():
    c = pm.H800x8
    ratios = {m: pm.speedups(pm.ag_gemm(c, pm.Shape(m=m, n=3696, k=8192)))["fused"] for m in (512, 8192)}
    assert all(1.0 < r < 2.0 for r in ratios.values())
    rows = pm.comparison_rows()
    assert {r["op"] for r in rows} == {"ag_gemm", "gemm_rs"} and len(rows) == 6
