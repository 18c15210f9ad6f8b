"""The MoE layer time model (sequential, Tutel/FasterMoE chunks, COMET's fused layers): bounds, limits,
monotonicity and the closed forms it is built from."""

import itertools
import math
import random
from dataclasses import replace

import pytest

from tessera.distributed import moe_perfmodel as mp

N = mp.H800_NODE


def test_ramp_fit_recovers_the_measured_points():
    peak, r0 = mp.fit_ramp([(256, 686.0), (1024, 786.0)])
    assert peak * 256 / (256 + r0) == pytest.approx(686.0) and peak * 1024 / (1024 + r0) == pytest.approx(786.0)
    assert (peak, r0) == (pytest.approx(N.peak_tflops, rel=2e-3), pytest.approx(N.ramp_rows, rel=2e-2))


@pytest.mark.parametrize("s", mp.MODELS, ids=lambda s: s.name)
def test_topk_local_reduce_matches_sampling(s):
    rng = random.Random(0)
    g = s.experts // N.ranks
    n = 4000
    ranks_hit = sum(len({e // g for e in rng.sample(range(s.experts), s.top_k)}) for _ in range(n))
    assert mp.topk_rows_after_local_reduce(s, N.ranks) == pytest.approx(ranks_hit / n / s.top_k, abs=0.02)
    if g == 1:  # one expert per rank: nothing to reduce locally
        assert mp.topk_rows_after_local_reduce(s, N.ranks) == 1.0


def test_layer0_closed_form_is_the_list_schedule():
    rng = random.Random(1)
    for _ in range(200):
        g, W = rng.uniform(0.1, 2), rng.randint(2, 9)
        arrivals = sorted(rng.uniform(0, 5) for _ in range(W))
        arrivals[0] = 0.0
        t = 0.0
        for a in arrivals:  # compute block j when the previous one ended and its data is there
            t = max(t, a) + g
        assert mp.layer0_end(g, arrivals) == pytest.approx(t)


def test_flow_shop_closed_form_is_the_list_schedule():
    for g, c, nb in itertools.product([0.3, 1.0, 2.0], [0.5, 1.0, 3.0], [1, 2, 4, 8]):
        end_g = end_c = 0.0
        for _ in range(nb):
            end_g += g
            end_c = max(end_c, end_g) + c
        assert mp.flow_shop2(g, c, nb) == pytest.approx(end_c)


@pytest.mark.parametrize("s", mp.MODELS, ids=lambda s: s.name)
@pytest.mark.parametrize("tokens", [1024, 4096, 16384])
def test_overlap_bounds(s, tokens):
    """No schedule beats its compute alone on all SMs (the fused one also pays for the SMs it gives away),
    and the fused one never saves more than the communication it hides plus the permutations it fuses."""
    seq, pipe, cm = mp.sequential(N, s, tokens), mp.pipelined(N, s, tokens), mp.comet(N, s, tokens)
    w = mp.work(N, s, tokens)
    assert seq["time"] == pytest.approx(seq["compute"] + seq["comm"])
    assert cm["time"] >= w.gemm0 + w.act + w.gemm1
    assert pipe["time"] >= w.permute + w.gemm0 + w.act + w.gemm1 - 1e-12
    assert seq["time"] - cm["time"] <= seq["comm"] + w.permute + 7 * N.launch_us * 1e-6
    assert 0.0 <= mp.hidden_share(cm) <= 1.0


@pytest.mark.parametrize("s", mp.MODELS, ids=lambda s: s.name)
def test_times_grow_with_tokens_and_skew(s):
    for fn in (mp.sequential, mp.pipelined, mp.comet):
        t = [fn(N, s, m)["time"] for m in (512, 1024, 4096, 16384)]
        assert t == sorted(t) and t[-1] > t[0]
        assert fn(N, s, 4096, skew=1.5)["time"] > fn(N, s, 4096)["time"]


def test_free_communication_limits():
    """With an infinitely fast link the fused layer costs its compute plus the SMs a copy needs;
    with a very slow one every schedule is communication-bound and COMET's speedup tends to the
    sequential/fused communication ratio."""
    fast = replace(N, link_gbps=1e9, nccl_gbps=1e9, sm_copy_gbps=1e9, alpha_us=0.0)
    s = mp.MIXTRAL_8X7B
    cm, w = mp.comet(fast, s, 8192), mp.work(fast, s, 8192)
    assert cm["n_c"] == 1 and cm["time"] == pytest.approx(w.gemm0 + w.act + w.gemm1, rel=0.05)
    assert mp.sequential(fast, s, 8192)["time"] / cm["time"] < 1.1  # nothing left to hide
    slow = replace(N, link_gbps=0.1, nccl_gbps=0.1, alpha_us=0.0)
    r = mp.compare(slow, s, 8192)
    assert r["comm_over_compute"] > 100 and r["speedup_vs_sequential"] == pytest.approx(1.0, abs=0.05)


def test_more_comm_sms_move_data_faster_but_compute_slower():
    s, w = mp.QWEN2_MOE, mp.work(N, mp.QWEN2_MOE, 8192)
    t = {nc: mp.comet_layer1(N, s, w, nc, 2) for nc in (1, 20, 60)}
    assert t[20] < t[1] and t[20] < t[60]  # an interior optimum, as COMET's Fig. 8 shows


def test_best_layer0_nc_grows_with_tokens():
    """Layer0's (expert, source) GEMM problems get more efficient with more rows, so the compute side
    can afford more communication programs (COMET reports 18 -> 26 of 132 for M 4096 -> 16384)."""
    for s in mp.MODELS:
        ncs = [mp.comet(N, s, m)["n_c_layer0"] for m in (1024, 4096, 16384)]
        assert ncs == sorted(ncs) and ncs[-1] > ncs[0]


def test_nccl_bandwidth_for_a_comm_share():
    s = mp.MIXTRAL_8X7B
    bw = mp.nccl_for_comm_share(N, s, 4096, 0.47)
    t = mp.sequential(replace(N, nccl_gbps=bw), s, 4096)
    assert t["comm"] / t["time"] == pytest.approx(0.47, abs=1e-3) and bw < N.nccl_gbps


def test_bad_input():
    with pytest.raises(ValueError, match="tokens"):
        mp.work(N, mp.MIXTRAL_8X7B, 0)
    with pytest.raises(ValueError, match="n_c"):
        mp.comet(N, mp.MIXTRAL_8X7B, 1024, n_c=132)
    assert math.isfinite(mp.compare(N, mp.PHI35_MOE, 2048)["speedup_vs_pipelined"])
