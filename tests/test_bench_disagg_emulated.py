"""benchmarks/bench_disagg_emulated.py: the pure parts of its prediction (no processes): the link's share of a
probe's round trip, the busy-time windows, the simulator's inputs for batched and unbatched expert calls."""

import pytest
from bench_modules import load_benchmark

from tessera.parallel.disagg import pingpong

B = load_benchmark("bench_disagg_emulated")
FITS = {"k1": 40e-6, "k2": 240e-6, "k3": 2.6e-6, "k4": 1.1e-3, "layers": 4, "hidden": 256, "top_k": 2, "act_bytes": 4}


def test_link_tc_takes_out_what_the_sides_already_hold():
    # RTT 5 ms = send 1 + 2 requests handled one after another (1 each) + two transfers of 1 ms
    assert B.link_tc(5e-3, 1e-3, 1e-3, attn=2) == pytest.approx(1e-3)
    assert B.link_tc(1e-3, 1e-3, 1e-3) == 0.0  # noisy medians never give a negative link


def test_overlap_clips_to_the_window():
    assert B.overlap([(0.0, 2.0), (3.0, 4.0), (9.0, 12.0)], 1.0, 10.0) == pytest.approx(1.0 + 1.0 + 1.0)
    assert B.overlap([], 0.0, 1.0) == 0.0


def test_predict_fits_batched_pays_the_per_call_constant_once():
    un = B.predict_fits(FITS, 2, 32, 1.0, False, 2e-3, 0.3e-3)
    ba = B.predict_fits(FITS, 2, 32, 1.0, True, 2e-3, 0.3e-3)
    rows = 32 * 2 / 2  # one attention rank's rows per expert rank
    assert un["te_s"] == pytest.approx(2 * (FITS["k3"] * rows + FITS["k4"]))
    assert ba["te_s"] == pytest.approx(FITS["k3"] * 2 * rows + FITS["k4"])
    assert un["te_s"] - ba["te_s"] == pytest.approx(FITS["k4"])
    assert ba["per_rank_tok_s"] > un["per_rank_tok_s"]  # Te is the bottleneck here (Te > Ta)
    assert un["step_s"] == pytest.approx(pingpong.simulate(un["ta_s"], un["te_s"], 1e-3, 2, 4, send_overhead=0.3e-3).total)


def test_predict_parts_is_the_simulator_plus_the_serial_work_between_forwards():
    ta, te, tc, between = 2e-3, 3e-3, 0.5e-3, 0.4e-3
    p = B.predict_parts(ta, te, tc, between, 1, 4, per_rank=16, batched=True)
    assert p["step_s"] == pytest.approx(4 * (ta + te + 2 * tc) + between)  # m = 1: nothing overlaps
    assert p["per_rank_tok_s"] == pytest.approx(16 / p["step_s"])
    assert "step_out_of_phase_s" not in p  # batched: the lock-step simulator's own setting
    u = B.predict_parts(ta, te, tc, between, 1, 4, per_rank=16, batched=False)
    # out of phase: the two attention ranks as one side of twice the speed, 2 micro-batches, one call each
    assert u["step_out_of_phase_s"] == pytest.approx(pingpong.simulate(ta / 2, te / 2, tc, 2, 4).total + between)
    assert u["step_out_of_phase_s"] < u["step_s"]


def _forward(t0, dur, sleep, send, recv):
    return {"t0": t0, "t1": t0 + dur, "sleep": sleep, "send": send, "recv": recv}


def test_attention_parts_skip_the_prefill_and_take_the_waits_off():
    units = 8  # 4 layers x 2 micro-batches
    fw = [_forward(0.0, 1.0, 0.5, 0.1, 0.5)]  # the prefill: ignored
    fw += [_forward(1.0 + 0.3 * i, 0.25, 0.08, 0.016, 0.09) for i in range(4)]  # a decode step every 0.3 s
    parts = B.attention_parts([{"forwards": fw}], units)
    assert parts["busy_s"] == pytest.approx((0.25 - 0.09) / units)
    assert parts["slept_s"] == pytest.approx(0.08 / units)
    assert parts["send_s"] == pytest.approx(0.016 / units)
    assert parts["between_s"] == pytest.approx(0.05)
    assert parts["step_s"] == [pytest.approx(0.3)]


@pytest.mark.parametrize("calls_per_mb", [1, 2])
def test_expert_parts_count_micro_batches_by_calls_in_the_decode_window(calls_per_mb):
    att = [{"forwards": [_forward(0.0, 1.0, 0, 0, 0), _forward(2.0, 1.0, 0, 0, 0), _forward(3.0, 1.0, 0, 0, 0)]}]
    # window [2, 4]: 8 calls of 0.1 s inside it, one in the prefill outside it; waits cover 0.8 s of the window
    calls = [(64, 0.5, 0.1)] + [(32, 2.0 + 0.25 * i, 0.1) for i in range(8)]
    exp = [{"calls": calls, "waits": [(1.5, 2.4), (3.0, 3.4)]}]
    parts = B.expert_parts(exp, att, calls_per_mb)
    mbs = 8 / calls_per_mb
    assert parts["window_s"] == pytest.approx(2.0)
    assert parts["busy_s"] == pytest.approx((2.0 - 0.8) / mbs)
    assert parts["slept_s"] == pytest.approx(0.8 / mbs)
    assert parts["calls_busy_fraction"] == pytest.approx(0.4)


def test_configs_are_checked():
    assert B.parse_configs("heap+batch, p2p") == ["heap+batch", "p2p"]
    with pytest.raises(SystemExit, match="--configs"):
        B.parse_configs("heap,nccl")
