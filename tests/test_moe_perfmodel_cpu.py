"""The CPU MoE overlap model (`moe_perfmodel_cpu`): its interpolation, the limits of each schedule (no
communication, no compute), bounds, the closed forms against list schedules of the benchmark's order, and
monotonicity in every input. Nothing here times anything."""

import random

import pytest

from tessera.distributed import moe_perfmodel_cpu as mc

BASE = {"T": 256, "k": 2, "E": 8, "H": 1024, "I": 16, "world": 2, "chunks": 2, "blocks": 4}


def settings(a2a=(2e-4, 1e-9), p2p=(1.5e-4, 1e-9), host=1e-4, per_row=(2e-6, 1.3e-6), rows=512, **kw) -> dict:
    """Synthetic inputs: all-to-all and exchange curves alpha + bytes * beta at the model's own sizes (a send
    to a posted receive half the exchange), every host part `host` seconds (or a dict)."""
    s = {**BASE, "per_row_s": list(per_row), "rows": rows, **kw}
    sizes = mc.message_bytes(s)
    s["a2a_s"] = [[b, a2a[0] + a2a[1] * b] for b in sizes["a2a"]]
    s["p2p_s"] = [[b, p2p[0] + p2p[1] * b] for b in sizes["p2p"]]
    s["p2p_posted_s"] = [[b, p2p[0] + p2p[1] * b] for b in sizes["p2p_posted"]]
    s["send_posted_s"] = [[b, (p2p[0] + p2p[1] * b) / 2] for b in sizes["send_posted"]]
    s["host_s"] = host if isinstance(host, dict) else dict.fromkeys(mc.HOST_PARTS, host)
    return s


def test_interp_through_the_points_floor_and_extrapolation():
    pts = [[100, 1.0], [10, 0.5], [1000, 4.0]]
    assert [mc.interp(pts, b) for b in (10, 100, 1000)] == [0.5, 1.0, 4.0]
    assert mc.interp(pts, 55) == pytest.approx(0.75)
    assert mc.interp(pts, 1) == 0.5  # below the smallest size: its latency
    assert mc.interp(pts, 2000) == pytest.approx(4.0 + 3.0 / 900 * 1000)
    assert mc.interp([[10, 2.0], [20, 1.0]], 40) == 1.0  # a falling last segment is not extrapolated down
    with pytest.raises(ValueError, match="two or more distinct sizes"):
        mc.interp([[10, 1.0]], 5)
    with pytest.raises(ValueError, match="two or more distinct sizes"):
        mc.interp([[10, 1.0], [10, 2.0]], 5)


def test_home_tokens_match_uniform_routing():
    # a token hits a given peer unless both of its 2 experts are among the other 4 of 8: 1 - 6/28
    assert mc._home_tokens({**BASE, "rows": 512}) == pytest.approx(256 * (1 - 6 / 28))


def test_missing_inputs_are_named():
    s = settings()
    del s["p2p_s"], s["host_s"]["partial"]
    with pytest.raises(ValueError, match="p2p_s, host_s.partial"):
        mc.moe_overlap_prediction(s)
    with pytest.raises(ValueError, match="world >= 2"):
        mc.moe_overlap_prediction(settings(world=1))


def test_the_model_reads_its_curves_only_at_the_sizes_it_asks_for(monkeypatch):
    """The benchmark measures exactly `message_bytes`; the model must not read anywhere else."""
    s = settings()
    asked, real = [], mc._Inputs.curve

    def spy(self, key, nbytes):
        asked.append((key, nbytes))
        return real(self, key, nbytes)

    monkeypatch.setattr(mc._Inputs, "curve", spy)
    mc.breakdown(s)
    sizes = mc.message_bytes(s)
    assert {k for k, _ in asked} == set(mc.CURVES)
    for key, x in asked:
        assert x in sizes[key.removesuffix("_s")], (key, x)


def test_samples_resampled_median_and_the_scalar_limit():
    """Constant samples give the scalar answer; heavy-tailed steps put the median of the sum above the sum
    of the medians (what the resampling is for); a fixed seed gives a fixed answer."""
    s = settings()
    scalar = mc.moe_overlap_prediction(s)
    const = {**s, "host_s": {k: [v] * 7 for k, v in s["host_s"].items()}}
    assert mc.moe_overlap_prediction(const) == pytest.approx(scalar)
    tail = {**s, "host_s": {k: [v, v, v, 20 * v, 20 * v] for k, v in s["host_s"].items()}}
    medians = {k: v["time"] for k, v in mc.breakdown(tail).items()}
    assert medians == pytest.approx(scalar)  # every host part's median is still v
    got = mc.moe_overlap_prediction(tail, draws=400)
    assert all(got[k] > medians[k] for k in got)
    assert mc.moe_overlap_prediction(tail, draws=400) == got
    with pytest.raises(ValueError, match="no samples"):
        mc.moe_overlap_prediction({**s, "host_s": {**s["host_s"], "plan": []}})


@pytest.mark.parametrize("world,chunks,blocks", [(2, 2, 4), (2, 4, 1), (4, 3, 2)])
def test_without_communication_or_host_work_every_schedule_is_its_compute(world, chunks, blocks):
    s = settings(a2a=(0, 0), p2p=(0, 0), host=0.0, world=world, chunks=chunks, blocks=blocks)
    compute = sum(s["per_row_s"]) * s["rows"]
    for sched, t in mc.moe_overlap_prediction(s).items():
        assert t == pytest.approx(compute), sched


def test_without_communication_each_schedule_adds_its_host_steps():
    h = {k: (i + 1) * 1e-5 for i, k in enumerate(mc.HOST_PARTS)}
    s = settings(a2a=(0, 0), p2p=(0, 0), host=h)
    C, W, nb = s["chunks"], s["world"], s["blocks"]
    compute = sum(s["per_row_s"]) * s["rows"]
    t = mc.moe_overlap_prediction(s)
    assert t["sequential"] == pytest.approx(compute + h["plan"] + h["zeros"] + h["combine"])
    assert t["pipelined"] == pytest.approx(compute + C * h["plan_chunk"] + h["zeros"] + C * h["combine_chunk"])
    # the communication thread starts while the own rows compute (shorter here: hidden)
    assert h["thread"] < s["per_row_s"][0] * s["rows"] / W
    assert t["comet"] == pytest.approx(compute + h["plan"] + h["comet_prep"] + nb * W * h["partial"]
                                       + nb * h["add_block"] + (W - 1) * nb * h["add_block"])


def test_without_compute_the_pipelined_all_to_alls_run_back_to_back():
    s = settings(per_row=(0, 0), host=0.0)
    parts = mc.breakdown(s)["pipelined"]
    C = s["chunks"]
    assert parts["time"] == pytest.approx(C * (parts["chunk_dispatch"] + parts["chunk_combine"])
                                          + C * parts["plans_counts"] / C)


def test_pipelined_closed_form_when_compute_bound():
    h, d, g, b, red = 0.3, 0.2, 1.0, 0.25, 0.05
    for C in (1, 2, 3, 5):
        assert mc._pipelined_end(h, d, g, b, red, C) == pytest.approx(h + d + C * g + max((C - 1) * red, b) + red)


@pytest.mark.parametrize("seed", range(5))
def test_pipelined_between_overlap_bounds_and_the_chain(seed):
    rng = random.Random(seed)
    for _ in range(100):
        h, d, g, b, red = (rng.uniform(0, 1) for _ in range(5))
        C = rng.randint(1, 8)
        t = mc._pipelined_end(h, d, g, b, red, C)
        assert t >= max(h + d + C * g + b, h + C * (d + b)) + red - 1e-12
        assert t <= h + C * (d + g + b + red) + 1e-12


def _layer1_list_schedule(g_peers: list[float], g_own: float, send: float, blocks: int, deliver: float) -> float:
    """The code's order step by step: per block each peer's part is computed and queued, then the own part;
    the communication thread sends the queue in order, one send of `send` seconds per peer and block; the
    last block's sums have landed `deliver` after their send started."""
    t, comm, last_start = 0.0, 0.0, 0.0
    for _ in range(blocks):
        for gp in g_peers:
            t += gp
            last_start = max(comm, t)
            comm = last_start + send
        t += g_own
    return max(t, comm, last_start + deliver)


def test_layer1_closed_form_is_the_list_schedule():
    rng = random.Random(3)
    for _ in range(300):
        gp, go, c, nb = rng.uniform(0, 2), rng.uniform(0, 2), rng.uniform(0, 3), rng.randint(1, 8)
        x = c + rng.uniform(0, 2)
        assert mc.layer1_end(gp + go, go, c, nb) == pytest.approx(_layer1_list_schedule([gp], go, c, nb, c))
        assert mc.layer1_end(gp + go, go, c, nb, x) == pytest.approx(_layer1_list_schedule([gp], go, c, nb, x))
        # W > 2: the peers' sends as one stage released after all peers' parts: never optimistic
        W = rng.randint(3, 6)
        want = _layer1_list_schedule([gp] * (W - 1), go, c, nb, c)
        assert mc.layer1_end((W - 1) * gp + go, go, (W - 1) * c, nb) >= want - 1e-12


@pytest.mark.parametrize("seed", range(4))
def test_no_schedule_beats_its_compute_or_its_exposed_communication(seed):
    rng = random.Random(seed)
    s = settings(a2a=(rng.uniform(0, 5e-4), rng.uniform(0, 2e-9)), p2p=(rng.uniform(0, 5e-4), rng.uniform(0, 2e-9)),
                 host=rng.uniform(0, 3e-4), per_row=(rng.uniform(0, 5e-6), rng.uniform(0, 5e-6)))
    bd = mc.breakdown(s)
    compute = sum(s["per_row_s"]) * s["rows"]
    for sched, parts in bd.items():
        assert parts["time"] >= compute - 1e-12, sched
    seq = bd["sequential"]
    assert seq["time"] == pytest.approx(sum(v for k, v in seq.items() if k != "time"))
    pipe = bd["pipelined"]
    assert pipe["time"] >= s["chunks"] * (pipe["chunk_dispatch"] + pipe["chunk_combine"]) - 1e-12
    cm = bd["comet"]  # the peers' rows must arrive before they are computed
    assert cm["layer0"] >= cm["rows_exchange"] + s["per_row_s"][0] * s["rows"] / s["world"] - 1e-12
    assert cm["layer1"] >= s["blocks"] * cm["block_send"] - 1e-12
    assert cm["layer1"] >= (s["per_row_s"][1] * s["rows"] + s["blocks"] * s["world"] * s["host_s"]["partial"]) - 1e-12


def test_monotonic_in_every_input():
    rng = random.Random(5)
    for _ in range(20):
        kw = {"a2a": (rng.uniform(1e-5, 5e-4), rng.uniform(1e-10, 2e-9)),
              "p2p": (rng.uniform(1e-5, 5e-4), rng.uniform(1e-10, 2e-9)),
              "host": {k: rng.uniform(0, 3e-4) for k in mc.HOST_PARTS},
              "per_row": (rng.uniform(1e-7, 5e-6), rng.uniform(1e-7, 5e-6))}
        base = mc.moe_overlap_prediction(settings(**kw))
        bumps = [{**kw, "a2a": (kw["a2a"][0] * 1.5, kw["a2a"][1] * 1.5)}, 
                 {**kw, "p2p": (kw["p2p"][0] * 1.5, kw["p2p"][1] * 1.5)},
                 {**kw, "per_row": (kw["per_row"][0] * 1.5, kw["per_row"][1])},
                 {**kw, "per_row": (kw["per_row"][0], kw["per_row"][1] * 1.5)},
                 {**kw, "rows": 700}]
        bumps += [{**kw, "host": {**kw["host"], k: kw["host"][k] + 1e-4}} for k in mc.HOST_PARTS]
        for bump in bumps:
            for sched, t in mc.moe_overlap_prediction(settings(**bump)).items():
                assert t >= base[sched] - 1e-12, (sched, bump)
