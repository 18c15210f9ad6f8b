"""The accuracy harness's sampling protocol (R-KV paper, arXiv 2505.24133: temperature 0.6, top-p 0.95, mean
accuracy over samples): seeded samples per problem that do not depend on the batch, the per-problem records,
resume, modes that never mix, the greedy path as before, and the statistics on per-problem means."""

import json
import random
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from bench_modules import load_benchmark

from tessera.config import SamplingParams
from tessera.tasks.paired import compare, proportion_interval

SEEDS = [1_000_000, 1_000_001, 1_000_002]  # held-out problems; difficulty 2 keeps prompts ~40 tokens


def _bench():
    return load_benchmark("bench_rkv_accuracy")


@pytest.fixture(scope="module")
def llm():
    from tessera.engine import LLM

    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny decode steps: on a shared 2-core machine two threads mostly wait
    yield LLM.load()
    torch.set_num_threads(n)


# ---- statistics on per-problem means (no model) ------------------------------------------------------------


def test_sign_test_counts_signs_of_mean_differences_and_drops_equal_means():
    a = {0: 0.5, 1: 1.0, 2: 0.25, 3: 0.75, 4: 0.0}
    b = {0: 0.25, 1: 1.0, 2: 0.5, 3: 0.0, 4: 0.0}
    r = compare("A", a, "B", b)
    assert (r["wins"], r["losses"]) == (2, 1)  # problems 0 and 3 vs 2; 1 and 4 are ties (equal means)
    assert r["sign_p"] == 1.0  # 2 vs 1 of 3 under a fair coin
    assert r["diff"] == pytest.approx((0.25 + 0 - 0.25 + 0.75 + 0) / 5)
    assert r["acc_a"] == pytest.approx(2.5 / 5) and r["acc_b"] == pytest.approx(1.75 / 5)


def test_wilson_interval_covers_means_over_samples():
    """Per-problem means of K samples (problem difficulty varies): the Wilson interval over problems at the
    mean covers the true accuracy at least 95% of the time (it is conservative, see proportion_interval)."""
    rng, hits, trials, n, k = random.Random(0), 0, 400, 60, 4
    for _ in range(trials):
        ps = [rng.random() for _ in range(n)]  # each problem's chance of a correct sample
        means = [sum(rng.random() < p for _ in range(k)) / k for p in ps]
        lo, hi = proportion_interval(sum(means), n)
        hits += lo <= 0.5 <= hi  # E[p] = 0.5
    assert hits / trials >= 0.95
    assert proportion_interval(140.0, 200) == proportion_interval(140, 200)  # 0/1 outcomes: the usual interval


# ---- seeded samples (embedded model, outputs of ~10 tokens) ------------------------------------------------


def test_samples_are_seeded_per_problem_and_index_and_independent_of_the_batch(tiny_llm):
    """A tiny random model (flat logits: samples differ at once) at the paper's temperature and top-p."""
    from tessera.tasks.evaluate import _sample

    llm = tiny_llm(64)
    probs = [SimpleNamespace(prompt=[1, 5 + i, 7, 9, 11 + i], seed=s) for i, s in enumerate(SEEDS)]
    sp = SamplingParams(max_new_tokens=10, temperature=0.6, top_p=0.95, ignore_eos=True)
    k = 3
    batch, _ = _sample(llm, probs, sp, k, None, "dense", None)
    ids = [[c.token_ids for c in cs] for cs in batch]
    assert [[c.token_ids for c in cs] for cs in _sample(llm, probs, sp, k, None, "dense", None)[0]] == ids  # rerun
    alone, _ = _sample(llm, probs[1:2], sp, k, None, "dense", None)
    assert [c.token_ids for c in alone[0]] == ids[1]  # the other problems of the batch change nothing
    # sample j of problem s is sample j of LLM.generate(prompt, seed=s, n=k) with the prompt alone
    ref = llm.generate([probs[2].prompt], replace(sp, seed=probs[2].seed, n=k)).completions
    assert [c.token_ids for c in ref] == ids[2]
    assert all(len({tuple(t) for t in row}) == k for row in ids)  # another index, another stream
    same_prompt = [SimpleNamespace(prompt=probs[0].prompt, seed=SEEDS[1])]  # another problem seed, other samples
    assert [c.token_ids for c in _sample(llm, same_prompt, sp, k, None, "dense", None)[0][0]] != ids[0]
    greedy = llm.generate([probs[0].prompt], replace(sp, temperature=0.0)).completions[0].token_ids
    assert any(t != greedy for t in ids[0])


def test_evaluate_records_every_sample_and_the_mean(llm):
    from tessera.tasks.evaluate import evaluate

    seen = []
    r = evaluate(llm, seeds=SEEDS[:2], difficulty=2, progress=False, samples=3, temperature=1.5, top_p=0.95,
                 max_new_tokens=8, on_result=seen.append)
    assert len(seen) == 2 and r["n"] == 2
    for rec in r["results"]:
        assert len(rec["samples"]) == len(rec["samples_generated_tokens"]) == len(rec["finish_reasons"]) == 3
        assert set(rec["samples"]) <= {0, 1} and rec["correct"] == pytest.approx(sum(rec["samples"]) / 3)
        assert rec["generated_tokens"] == pytest.approx(sum(rec["samples_generated_tokens"]) / 3)
        assert max(rec["samples_generated_tokens"]) <= 8
    assert r["accuracy"] == pytest.approx(sum(x["correct"] for x in r["results"]) / 2)
    with pytest.raises(ValueError, match="greedy decoding"):
        evaluate(llm, seeds=SEEDS[:1], samples=2, progress=False)


# ---- the benchmark script: files, resume, modes, report ----------------------------------------------------


def _argv(tmp_path, *extra):
    return ["--n", "2", "--seed-start", str(SEEDS[0]), "--difficulty", "2", "--methods", "rkv", "--budgets", "24",
            "--fractions", "", "--buffer", "8", "--window", "4", "--max-new-tokens", "6", "--batch-size", "8",
            "--work-dir", str(tmp_path / "work"), "--out", str(tmp_path / "res"), *extra]


def _lines(d: Path) -> dict[str, list[dict]]:
    return {f.name: [json.loads(x) for x in f.read_text().splitlines()] for f in sorted(d.glob("*.jsonl"))}


def test_bench_sampling_run_resumes_and_never_mixes_with_greedy(tmp_path, llm):
    bench = _bench()
    bench.main(_argv(tmp_path, "--sampling", "--samples", "2"))
    (work,) = (tmp_path / "work").iterdir()
    files = _lines(work)
    assert sorted(files) == ["full@None.s2_t0.6_p0.95.0of1.jsonl", "rkv@24.s2_t0.6_p0.95.0of1.jsonl"]
    for recs in files.values():
        assert sorted(r["seed"] for r in recs) == SEEDS[:2]
        assert all(len(r["samples"]) == 2 and r["mode"] == ".s2_t0.6_p0.95" for r in recs)
    res = json.loads((tmp_path / "res.json").read_text())
    assert res["decoding"] == {"mode": "sampling", "samples": 2, "temperature": 0.6, "top_p": 0.95}
    full = files["full@None.s2_t0.6_p0.95.0of1.jsonl"]
    assert res["full"]["accuracy"] == pytest.approx(sum(r["correct"] for r in full) / 2)
    assert "2 samples per problem" in (tmp_path / "res.md").read_text()

    bench.main(_argv(tmp_path, "--sampling", "--samples", "2"))  # resume: every problem is done, nothing runs
    assert _lines(work) == files

    with pytest.raises(SystemExit, match="no FullKV result yet \\(greedy\\)"):  # sampled files are not greedy's
        bench.main(_argv(tmp_path, "--report"))
    bench.main(_argv(tmp_path))  # greedy: the file names and record fields of before
    greedy = {k: v for k, v in _lines(work).items() if k not in files}
    assert sorted(greedy) == ["full@None.0of1.jsonl", "rkv@24.0of1.jsonl"]
    for recs in greedy.values():
        assert all(set(r) == {"seed", "difficulty", "answer", "correct", "generated_tokens", "reference_tokens",
                              "finish_reason", "method", "budget"} and r["correct"] in (0, 1) for r in recs)
    assert json.loads((tmp_path / "res.json").read_text())["decoding"] == {"mode": "greedy"}


def test_bench_report_averages_per_problem_means_and_refuses_foreign_records(tmp_path, capsys):
    bench = _bench()
    argv = _argv(tmp_path, "--sampling", "--samples", "4", "--n", "4", "--report")
    work = tmp_path / "work" / "reasoning_s1000000_d2_buf8_w4_m6"
    work.mkdir(parents=True)
    tag = ".s4_t0.6_p0.95"
    means = {"full@None": [1.0, 0.75, 1.0, 0.5], "rkv@24": [0.75, 0.75, 0.25, 0.5]}
    for key, ms in means.items():
        with (work / f"{key}{tag}.0of1.jsonl").open("w") as f:
            for s, m in zip(range(SEEDS[0], SEEDS[0] + 4), ms):
                f.write(json.dumps({"seed": s, "correct": m, "generated_tokens": 6.0, "samples": [1] * int(4 * m)
                                    + [0] * (4 - int(4 * m)), "mode": tag}) + "\n")
    bench.main(argv)
    res = json.loads((tmp_path / "res.json").read_text())
    assert res["full"]["accuracy"] == pytest.approx(0.8125) and res["full"]["correct"] == pytest.approx(3.25)
    (rkv,) = res["points"]
    assert rkv["accuracy"] == pytest.approx(0.5625) and rkv["ci"] == list(proportion_interval(2.25, 4))
    (vs_full,) = [p for p in res["paired"] if p["b"] == "FullKV"]
    assert (vs_full["wins"], vs_full["losses"]) == (0, 2)  # problems 0 and 2 lost; 1 and 3 tie
    assert "sign test on the per-problem means" in capsys.readouterr().out

    with (work / f"full@None{tag}.1of2.jsonl").open("w") as f:  # a greedy record under a sampled name
        f.write(json.dumps({"seed": SEEDS[0], "correct": 1, "generated_tokens": 6}) + "\n")
    with pytest.raises(SystemExit, match="decoded as 'greedy', not '.s4_t0.6_p0.95'"):
        bench.main(argv)


@pytest.mark.parametrize("extra", [["--samples", "4"], ["--top-p", "0.9"], ["--sampling", "--temperature", "0"],
                                   ["--sampling", "--top-p", "1.5"]])
def test_bench_refuses_inconsistent_decoding_options(tmp_path, extra, capsys):
    with pytest.raises(SystemExit):
        _bench().main(_argv(tmp_path, *extra))
    assert "error:" in capsys.readouterr().err
