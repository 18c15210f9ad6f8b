"""The vLLM-shaped Python API: LLM(model=...), max_tokens, n, logprobs, penalties, chat, stream, progress."""

import json
import shutil

import pytest
import torch

from tessera.config import SamplingParams
from tessera.engine import LLM
from tessera.engine.engine import DEFAULT_MODEL
from tessera.engine.sampling import apply_penalties
from tessera.tasks.reasoning import EVAL_SEED_BASE, make_problem

PROMPTS = [[1, 5, 7, 9, 11], [1, 3, 4, 4, 4, 4, 8]]


@pytest.fixture(scope="module")
def tiny(tiny_llm):
    return tiny_llm(128)


@pytest.fixture(scope="module")
def emb():
    return LLM(model=str(DEFAULT_MODEL))


def test_llm_model_keyword_and_embedded_names():
    assert LLM(model="dense").config.num_experts == 0
    with pytest.raises(TypeError, match="model must be"):
        LLM(model=3)
    with pytest.raises(FileNotFoundError):
        LLM(model="/nonexistent/model")


def test_max_tokens_is_max_new_tokens(tiny):
    a = tiny.generate(PROMPTS, SamplingParams(max_tokens=6, ignore_eos=True))
    b = tiny.generate(PROMPTS, SamplingParams(max_new_tokens=6, ignore_eos=True))
    assert [c.token_ids for c in a.completions] == [c.token_ids for c in b.completions]
    assert all(len(c.token_ids) == 6 for c in a.completions) and SamplingParams(max_tokens=6).max_tokens == 6


def test_n_completions_per_prompt(tiny):
    sp = SamplingParams(max_tokens=10, n=3, temperature=1.0, seed=5, ignore_eos=True)
    out = tiny.generate(PROMPTS, sp).completions
    assert len(out) == 6 and [c.index for c in out] == [0, 1, 2, 0, 1, 2]
    assert [c.prompt_ids for c in out] == [PROMPTS[0]] * 3 + [PROMPTS[1]] * 3
    assert len({tuple(c.token_ids) for c in out[:3]}) > 1  # different draws
    assert [c.token_ids for c in tiny.generate(PROMPTS, sp).completions] == [c.token_ids for c in out]
    greedy = tiny.generate(PROMPTS, SamplingParams(max_tokens=5, n=2, ignore_eos=True)).completions
    assert greedy[0].token_ids == greedy[1].token_ids


def test_per_prompt_sampling_params(tiny):
    sps = [SamplingParams(max_tokens=4, ignore_eos=True), SamplingParams(max_tokens=9, temperature=0.8, seed=1,
                                                                          ignore_eos=True)]
    out = tiny.generate(PROMPTS, sps).completions
    assert [len(c.token_ids) for c in out] == [4, 9]
    # seeded by (seed, completion index): the same draw whatever the other rows of the batch do
    assert out[1].token_ids == tiny.generate(PROMPTS, sps[1]).completions[1].token_ids


def test_logprobs_are_the_models(tiny):
    sp = SamplingParams(max_tokens=5, logprobs=3, ignore_eos=True)
    c = tiny.generate([PROMPTS[0]], sp).completions[0]
    assert len(c.logprobs) == 5
    ids = list(PROMPTS[0])
    for t, lp in zip(c.token_ids, c.logprobs):
        with torch.no_grad():
            ref = torch.log_softmax(tiny.model(torch.tensor([ids]))[0, -1].float(), -1)
        top = ref.topk(3).indices.tolist()
        assert set(lp) == set(top) | {t} and t == top[0]  # greedy: the sampled token is the top one
        for tok, v in lp.items():
            assert v == pytest.approx(float(ref[tok]), abs=1e-4)
        ids.append(t)


def test_penalties_match_their_definitions():
    from types import SimpleNamespace

    logits = torch.tensor([[2.0, -1.0, 0.5, 3.0]])
    sp = SamplingParams(presence_penalty=0.5, frequency_penalty=0.25, repetition_penalty=2.0)
    req = SimpleNamespace(params=sp, prompt_ids=[2], stop=SimpleNamespace(tokens=[0, 0, 1]))
    out = apply_penalties(logits, [req])[0].tolist()
    # token 0: seen twice -> 2/2 - 0.5 - 2*0.25; token 1: once -> -1*2 - 0.5 - 0.25; token 2: prompt only; 3: unseen
    assert out == pytest.approx([1 - 0.5 - 0.5, -2 - 0.5 - 0.25, 0.25, 3.0])
    plain = SimpleNamespace(params=SamplingParams(), prompt_ids=[2], stop=SimpleNamespace(tokens=[0]))
    assert apply_penalties(logits, [plain]) is logits


def test_repetition_penalty_changes_a_looping_greedy_output(tiny):
    base = tiny.generate(PROMPTS, SamplingParams(max_tokens=30, ignore_eos=True)).completions
    pen = tiny.generate(PROMPTS, SamplingParams(max_tokens=30, ignore_eos=True, repetition_penalty=3.0,
                                                frequency_penalty=1.0)).completions
    distinct = lambda cs: sum(len(set(c.token_ids)) for c in cs)
    assert distinct(pen) > distinct(base)


def test_stream_iterator_adds_up_to_the_text(emb):
    p = make_problem(EVAL_SEED_BASE + 3, difficulty=3).prompt
    sp = SamplingParams(max_tokens=40)
    pieces = list(emb.stream(p, sp))
    assert len(pieces) > 5 and "".join(pieces) == emb.generate(p, sp).completions[0].text
    it = emb.stream(p, sp)
    next(it)
    it.close()  # stopping early is fine
    with pytest.raises(ValueError, match="one prompt"):
        emb.stream([p, p])


def test_streamed_pieces_hold_back_stop_strings(emb):
    p = make_problem(EVAL_SEED_BASE + 3, difficulty=3).prompt
    full = emb.generate(p, SamplingParams(max_tokens=60)).completions[0].text
    words = full.split()
    stop = " ".join(words[8:10])  # a stop string two words long: it arrives in two pieces
    sp = SamplingParams(max_tokens=60, stop=stop)
    seen = []
    out = emb.generate(p, sp, stream=lambda i, t, piece: seen.append(piece)).completions[0]
    assert out.finish_reason == "stop" and stop not in out.text
    assert "".join(seen) == out.text == "".join(emb.stream(p, sp))


def test_chat_plain_template_equals_generate(emb):
    p = make_problem(EVAL_SEED_BASE + 4, difficulty=3).prompt
    sp = SamplingParams(max_tokens=30)
    chat = emb.chat([{"role": "user", "content": p}], sp).completions[0]
    assert chat.token_ids == emb.generate(p, sp).completions[0].token_ids
    two = emb.chat([[{"role": "user", "content": p}], [{"role": "system", "content": "problem :"},
                                                        {"role": "user", "content": p}]], sp)
    assert len(two.completions) == 2
    with pytest.raises(TypeError, match="messages"):
        emb.chat([{"role": "user"}])
    with pytest.raises(ValueError, match="role"):
        emb.chat([{"role": "wizard", "content": p}])


def test_chat_uses_the_checkpoints_template(tmp_path):
    model = tmp_path / "m"
    shutil.copytree(DEFAULT_MODEL, model)
    cfg = json.loads((model / "tokenizer_config.json").read_text())
    cfg["chat_template"] = ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'system' %}problem : "
                            "{% endif %}{{ m['content'] }} {% endfor %}{% if add_generation_prompt %}"
                            "think :{% endif %}")
    (model / "tokenizer_config.json").write_text(json.dumps(cfg))
    llm = LLM(model=str(model))
    p = make_problem(EVAL_SEED_BASE + 4, difficulty=3).prompt
    msgs = [{"role": "system", "content": "x"}, {"role": "user", "content": p.removesuffix(" think :")}]
    text = llm.chat_prompt(msgs)
    assert text == f"<s>problem : x {p}"
    sp = SamplingParams(max_tokens=12)
    got = llm.chat(msgs, sp).completions[0]
    assert got.prompt_ids == llm.tokenizer.encode(text, add_bos=False) and got.prompt_ids.count(1) == 1
    assert got.token_ids == llm.generate([got.prompt_ids], sp).completions[0].token_ids


def test_progress_bar(tiny, capsys):
    tiny.generate(PROMPTS, SamplingParams(max_tokens=3), use_tqdm=True)
    assert "generate" in capsys.readouterr().err


def test_threads_knob(monkeypatch):
    from tessera.engine.threads import default_threads, set_threads

    monkeypatch.delenv("TESSERA_THREADS", raising=False)
    assert default_threads() == 1
    monkeypatch.setenv("TESSERA_THREADS", "3")
    assert default_threads() == 3
    for bad in ("0", "two"):
        monkeypatch.setenv("TESSERA_THREADS", bad)
        with pytest.raises(ValueError, match="TESSERA_THREADS"):
            default_threads()
    old = torch.get_num_threads()
    try:
        assert set_threads(1) == 1 and torch.get_num_threads() == 1
        with pytest.raises(ValueError, match="threads"):
            set_threads(0)
    finally:
        torch.set_num_threads(old)
