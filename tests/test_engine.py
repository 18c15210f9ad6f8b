"""Batched engine: equivalence with per-sequence and cache-free decoding, sampling, stopping, errors."""

from dataclasses import replace

import pytest
import torch

from tessera.config import SamplingParams
from tessera.engine import LLM


@pytest.fixture(scope="module")
def llm(tiny_llm):
    return tiny_llm(96)


PROMPTS = [[1, 5, 7, 9, 11], [1, 3], [1, 4, 4, 4, 4, 4, 4, 8, 9, 10, 12]]


def reference_greedy(model, prompt, n):
    ids = list(prompt)
    for _ in range(n):
        with torch.no_grad():
            ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
    return ids[len(prompt):]


def test_batched_greedy_equals_single_and_cache_free(llm):
    sp = SamplingParams(max_new_tokens=24, ignore_eos=True)
    batched = llm.generate(PROMPTS, sp)
    for i, p in enumerate(PROMPTS):
        single = llm.generate([p], sp).completions[0].token_ids
        assert batched.completions[i].token_ids == single
        assert single == reference_greedy(llm.model, p, 24)
        assert batched.completions[i].finish_reason == "length"


def test_sampling_is_seeded_and_independent_of_batch(llm):
    sp = SamplingParams(max_new_tokens=16, temperature=0.9, top_p=0.9, top_k=20, seed=7, ignore_eos=True)
    a = llm.generate(PROMPTS, sp).completions
    b = llm.generate(PROMPTS, sp).completions
    assert [c.token_ids for c in a] == [c.token_ids for c in b]
    for i, prompt in enumerate(PROMPTS):  # every position, not just the first: the seed is per request
        alone = llm.generate([prompt], sp).completions[0]
        assert alone.token_ids == a[i].token_ids
    n2 = llm.generate(PROMPTS[1:2], replace(sp, n=2)).completions  # sample j of a prompt: the same stream
    assert n2[0].token_ids == a[1].token_ids and n2[1].token_ids != n2[0].token_ids
    other = llm.generate(PROMPTS, SamplingParams(max_new_tokens=16, temperature=0.9, seed=8, ignore_eos=True))
    assert [c.token_ids for c in other.completions] != [c.token_ids for c in a]


def test_top_k_one_is_greedy(llm):
    g = llm.generate(PROMPTS, SamplingParams(max_new_tokens=12, ignore_eos=True)).completions
    s = llm.generate(PROMPTS, SamplingParams(max_new_tokens=12, temperature=1.5, top_k=1, seed=1, ignore_eos=True))
    assert [c.token_ids for c in s.completions] == [c.token_ids for c in g]


def test_sampled_tokens_respect_top_k():
    from tessera.layers.sampler import make_generators, sample

    logits = torch.arange(10.0).repeat(4, 1)  # [4, 10]: top-3 are ids 7, 8, 9
    sp = SamplingParams(temperature=5.0, top_k=3, seed=0)
    gens = make_generators(sp, 4, "cpu")
    for _ in range(20):
        assert set(sample(logits, sp, gens, range(4)).tolist()) <= {7, 8, 9}
    sp = SamplingParams(temperature=1.0, top_p=0.5, seed=0)  # p(9)=0.63 alone reaches 0.5
    assert set(sample(logits, sp, make_generators(sp, 4, "cpu"), range(4)).tolist()) == {9}


def test_eos_stops_and_is_not_output(llm):
    greedy = llm.generate(PROMPTS[:1], SamplingParams(max_new_tokens=10, ignore_eos=True)).completions[0].token_ids
    eos = greedy[3]
    llm2 = LLM(llm.model)
    object.__setattr__(llm2.config, "eos_token_id", eos)
    try:
        c = llm2.generate(PROMPTS[:1], SamplingParams(max_new_tokens=10)).completions[0]
    finally:
        object.__setattr__(llm2.config, "eos_token_id", 2)
    assert c.finish_reason == "eos"
    assert c.token_ids == greedy[: greedy.index(eos)]


def test_position_limit_ends_generation(llm):
    p = [1 + i % 50 for i in range(89)]  # 89 tokens, max positions 96
    c = llm.generate([p], SamplingParams(max_new_tokens=50, ignore_eos=True)).completions[0]
    assert c.finish_reason == "length"
    assert len(p) + len(c.token_ids) == 96 + 1  # the last token is output but never fed back


def test_stream_callback_gets_every_token(llm):
    seen = []
    out = llm.generate(PROMPTS, SamplingParams(max_new_tokens=8, ignore_eos=True),
                       stream=lambda i, t, piece: seen.append((i, t)))
    for i, c in enumerate(out.completions):
        assert [t for j, t in seen if j == i] == c.token_ids


def test_kv_bytes_reported(llm):
    out = llm.generate(PROMPTS, SamplingParams(max_new_tokens=8, ignore_eos=True))
    cfg = llm.config
    per_slot = 2 * cfg.num_key_value_heads * cfg.head_dim * 4 + cfg.num_key_value_heads * 4  # K+V fp32 + int32 pos
    assert out.stats.peak_kv_bytes >= cfg.num_hidden_layers * 3 * (11 + 8) * per_slot - 1


@pytest.mark.parametrize("bad, match", [
    (dict(prompts=[[]]), "empty"),
    (dict(prompts=[[1] * 96]), "maximum is 96"),
    (dict(prompts=[[1, 999]]), "outside"),
    (dict(prompts=["hello"]), "no tokenizer"),
])
def test_bad_prompts(llm, bad, match):
    with pytest.raises(ValueError, match=match):
        llm.generate(bad["prompts"], SamplingParams(max_new_tokens=4))


@pytest.mark.parametrize("kw, match", [
    (dict(temperature=-1), "temperature"), (dict(top_p=0.0), "top_p"), (dict(top_p=1.5), "top_p"),
    (dict(top_k=-2), "top_k"), (dict(max_new_tokens=0), "max_new_tokens"), (dict(stop=("",)), "stop"),
])
def test_bad_sampling(kw, match):
    with pytest.raises(ValueError, match=match):
        SamplingParams(**kw)


def test_missing_model_path():
    with pytest.raises(FileNotFoundError, match="not a directory"):
        LLM.load("/nonexistent/model")
