"""Paired statistics of the accuracy harness (tessera/tasks/paired.py) and the teacher-forced metric
(tessera/tasks/teacher_forced.py), against exact values and an independent full-attention forward pass."""

import math

import pytest
import torch

from tessera.tasks.paired import compare, paired_bootstrap, proportion_interval, sign_test


def test_sign_test_is_the_exact_binomial_tail():
    assert sign_test(0, 0) == 1.0 and sign_test(3, 3) == 1.0
    assert sign_test(5, 0) == pytest.approx(2 / 32)  # all 5 discordant pairs one way
    assert sign_test(1, 9) == pytest.approx(2 * (1 + 10) / 1024)
    assert sign_test(9, 1) == sign_test(1, 9)


def test_paired_bootstrap_interval_is_about_the_difference():
    a = [1] * 60 + [0] * 40
    b = [1] * 40 + [0] * 60  # a is right on 20 more problems, never worse
    diff, lo, hi = paired_bootstrap(a, b)
    assert diff == pytest.approx(0.2) and 0.1 < lo < 0.2 < hi < 0.3
    diff, lo, hi = paired_bootstrap([1, 0] * 50, [0, 1] * 50)  # as many wins as losses
    assert diff == 0 and lo < 0 < hi
    with pytest.raises(ValueError, match="equally long"):
        paired_bootstrap([1], [1, 0])


def test_compare_says_beats_only_when_the_interval_excludes_zero():
    ids = range(100)
    a = {i: int(i < 70) for i in ids}
    b = {i: int(i < 50) for i in ids}
    r = compare("R-KV", a, "SnapKV", b)
    assert r["line"].startswith("R-KV beats SnapKV by +20.0 points (95% CI [") and r["wins"] == 20 and r["losses"] == 0
    r = compare("SnapKV", b, "R-KV", a)  # told from the winner's side: positive lead, interval and wins
    assert r["line"].startswith("R-KV beats SnapKV by +20.0 points (95% CI [+") and "20 wins / 0 losses" in r["line"]
    assert r["ci"][1] < 0
    near = {i: int(i < 52) for i in ids}
    assert "no clear difference" in compare("A", near, "B", b)["line"]
    assert compare("A", {1: 1, 2: 0}, "B", {2: 1, 3: 0})["n"] == 1  # only shared problems count


def test_wilson_interval():
    lo, hi = proportion_interval(98, 200)
    assert lo < 0.49 < hi and hi - lo == pytest.approx(2 * 1.96 * math.sqrt(0.49 * 0.51 / 200), rel=0.02)
    assert proportion_interval(0, 0) == (0.0, 1.0) and proportion_interval(10, 10)[1] == 1.0


@pytest.fixture
def one_thread():
    """Hundreds of tiny decode steps: on a shared 2-core machine two torch threads mostly wait for each other."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_teacher_forced_matches_one_full_forward_and_compression_adds_errors(one_thread):
    from tessera.engine import LLM
    from tessera.kv.presses import make_press
    from tessera.tasks.reasoning import make_problem
    from tessera.tasks.teacher_forced import teacher_forced

    llm = LLM.load()
    probs = [make_problem(1_000_000 + i, 2) for i in range(2)]  # ~140-token traces: seconds
    full = teacher_forced(llm, probs, batch_size=2)
    tok = llm.tokenizer
    for p, r in zip(probs, full):
        prompt, ref = tok.encode(p.prompt), tok.encode(p.solution, add_bos=False) + [tok.eos_id]
        ids = torch.tensor([prompt + ref])
        with torch.inference_mode():
            logits = llm.model(ids, torch.arange(ids.shape[1])[None])[0]  # [T, V], causal, no cache
        pred = logits[len(prompt) - 1:-1].argmax(-1)
        wrong = (pred != torch.tensor(ref)).nonzero()
        assert r["seed"] == p.seed and r["tokens"] == len(ref) and r["errors"] == len(wrong)
        assert r["first_divergence"] == (int(wrong[0]) if len(wrong) else None)
    pressed = teacher_forced(llm, probs, lambda: make_press("streamingllm", budget=40, buffer=8, window=4), batch_size=2)
    assert sum(r["errors"] for r in pressed) > sum(r["errors"] for r in full)
