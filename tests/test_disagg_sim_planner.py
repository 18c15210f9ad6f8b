"""The deployment planner (MegaScale-Infer's Algorithm 1) on hand-built profiles, and `tessera plan`."""

import json

import pytest

from tessera.parallel.disagg import pingpong as pp
from tessera.parallel.disagg import planner as pl


def profile_json(**over) -> dict:
    d = {
        "schema": pl.PROFILE_SCHEMA, "context": 512, "experts_per_group": 1,
        "model": {"name": "toy", "layers": 8, "hidden": 1024, "num_experts": 8, "top_k": 2, "act_bytes": 2,
                  "kv_bytes_per_token": 64e3, "attention_param_bytes": 2e9, "expert_param_bytes": 4e9},
        # attention 4x as costly per token as an expert row: balance at na = k1 E / (k3 K) = 16
        "attention": {"1": {"k1": 40e-6, "k2": 200e-6}, "2": {"k1": 22e-6, "k2": 150e-6}},
        "expert": {"1": {"k3": 10e-6, "k4": 300e-6}},
        "m2n": {"alpha_s": 20e-6, "bytes_per_s": 20e9},
        "hardware": {"attention": {"memory_bytes": 80e9}, "expert": {"memory_bytes": 80e9}},
    }
    for k, v in over.items():
        d[k] = v
    return d


def test_linear_fit_recovers_a_line():
    a, b, r2 = pl.fit_linear([1, 2, 4, 8], [3 + 2 * x for x in (1, 2, 4, 8)])
    assert (a, b, r2) == (pytest.approx(2), pytest.approx(3), pytest.approx(1))
    assert pl.fit_linear([1, 2, 3], [1, 3, 2])[2] < 0.5
    with pytest.raises(ValueError, match="two distinct"):
        pl.fit_linear([1, 1], [2, 3])


def test_m2n_curve_interpolates_and_extrapolates():
    c = pl.M2NCurve(((1e3, 1e-4), (1e6, 1e-3)))
    assert c.time(10) == 1e-4 and c.time(5.005e5) == pytest.approx(5.5e-4) and c.time(2e6) > 1e-3
    with pytest.raises(ValueError, match="sorted"):
        pl.M2NCurve(((1e6, 1e-3), (1e3, 1e-4)))


def test_balance_rule_sets_attention_replicas():
    p = pl.Profile.from_json(profile_json())
    plans = pl.search(p, 0.15)
    assert plans and {q.na for q in plans if q.tpa == 1} <= {16}  # k1 E / (k3 K) = 40 * 8 / (10 * 2)
    assert {q.na for q in plans if q.tpa == 2} <= {8, 9}  # 22 * 8 / 20 = 8.8


def test_best_plan_meets_every_limit_and_batch_is_the_largest():
    p = pl.Profile.from_json(profile_json())
    slo = 0.15
    best = pl.search(p, slo)[0]
    assert best.step_s <= slo and best.conditions["tc_below_tf"] and best.conditions["enough_micro_batches"]
    assert best.step_s == pytest.approx(pp.simulate(best.ta, best.te, best.tc, best.m, p.layers).total)
    bigger = pl.evaluate(p, best.tpa, best.tpe, best.na, best.m, best.ba + 1)
    assert bigger.step_s > slo or not pl._fits_memory(p, best.tpa, best.m, best.ba + 1)
    assert best.global_batch == best.ba * best.m * best.na
    assert all(q.per_gpu <= best.per_gpu for q in pl.search(p, slo))


def test_strict_mode_needs_three_micro_batches_and_tighter_limits_give_smaller_batches():
    p = pl.Profile.from_json(profile_json())
    assert min(q.m for q in pl.search(p, 0.15)) >= 3  # m >= 2 (1 + Tc / Tf) > 2
    assert min(q.m for q in pl.search(p, 0.15, strict=False)) == 1
    loose, tight = pl.search(p, 0.3)[0], pl.search(p, 0.1)[0]
    assert tight.global_batch < loose.global_batch


def test_memory_limit_caps_the_batch():
    big = pl.search(pl.Profile.from_json(profile_json()), 10.0)[0]
    small_hw = {"attention": {"memory_bytes": 4e9}, "expert": {"memory_bytes": 80e9}}
    small = pl.search(pl.Profile.from_json(profile_json(hardware=small_hw)), 10.0)
    assert small and small[0].global_batch < big.global_batch
    q = small[0]
    assert q.m * q.ba * 512 * 64e3 + 2e9 <= q.tpa * 4e9 * 0.9  # the KV of a replica spreads over its TP ranks


def test_max_gpus_and_skew():
    p = pl.Profile.from_json(profile_json())
    assert all(q.gpus <= 12 for q in pl.search(p, 0.15, max_gpus=12))
    even, skewed = pl.evaluate(p, 1, 1, 16, 3, 64), pl.evaluate(p, 1, 1, 16, 3, 64, balancedness=0.5)
    assert skewed.te > even.te  # the hottest expert group sets Te


@pytest.mark.parametrize("bad,msg", [({"schema": "x"}, "not a"), ({"experts_per_group": 3}, "does not divide"),
                                     ({"attention": {}}, "at least one")])
def test_bad_profiles_are_refused(bad, msg):
    with pytest.raises(ValueError, match=msg):
        pl.Profile.from_json(profile_json(**bad))


def test_cli_writes_a_plan_the_launcher_can_read(tmp_path, capsys):
    prof, out = tmp_path / "p.json", tmp_path / "plan.json"
    prof.write_text(json.dumps(profile_json()))
    routing = tmp_path / "r.json"
    routing.write_text(json.dumps({"routing": {"0": [100, 10, 10, 10, 10, 10, 10, 10]}}))
    assert pl.main(["--profile", str(prof), "--out", str(out), "--routing", str(routing)]) == 0
    text = capsys.readouterr().out
    assert "plan:" in text and "balancedness" in text
    plan = json.loads(out.read_text())
    assert plan["schema"] == pl.PLAN_SCHEMA
    assert plan["attention"]["ranks"] == plan["attention"]["replicas"] * plan["attention"]["tp"]
    assert plan["experts"]["ranks"] == len(plan["experts"]["placement"]) * plan["experts"]["tp"]
    assert sorted({e for g in plan["experts"]["placement"] for e in g}) == list(range(8))
    assert sum(g.count(0) for g in plan["experts"]["placement"]) >= 2  # the hot expert was replicated
    assert plan["predicted"]["step_s"] <= plan["time_between_tokens_limit_s"]


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert pl.main(["--profile", str(tmp_path / "missing.json")]) == 2
    assert "error" in capsys.readouterr().err
    prof = tmp_path / "p.json"
    prof.write_text(json.dumps(profile_json()))
    assert pl.main(["--profile", str(prof), "--slo-ms", "0.001"]) == 1


def test_tessera_plan_is_registered(tmp_path, capsys):
    from tessera import cli

    prof = tmp_path / "p.json"
    prof.write_text(json.dumps(profile_json()))
    assert cli.main(["plan", "--profile", str(prof), "--top", "1"]) == 0
    assert "plan:" in capsys.readouterr().out
