"""The embedded tiny reasoner: loads with our loader and with transformers, and solves problems."""

import pytest
import torch

from tessera.config import SamplingParams
from tessera.engine import LLM
from tessera.engine.engine import DEFAULT_MODEL
from tessera.tasks.reasoning import EVAL_SEED_BASE, make_problem, score


@pytest.fixture(scope="module")
def llm():
    return LLM.load()


def test_size_and_format():
    cfg_files = {p.name for p in DEFAULT_MODEL.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= cfg_files
    total = sum(p.stat().st_size for p in DEFAULT_MODEL.iterdir())
    assert total < 40e6


def test_parameters_under_10m(llm):
    assert llm.model.num_parameters() <= 10_000_000
    assert llm.config.num_attention_heads > llm.config.num_key_value_heads  # GQA, like the models we target


def test_transformers_loads_it_with_the_same_logits(llm):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf = AutoModelForCausalLM.from_pretrained(DEFAULT_MODEL).eval()
    tok = AutoTokenizer.from_pretrained(DEFAULT_MODEL)
    p = make_problem(EVAL_SEED_BASE + 5, difficulty=4).text
    ids = tok(p, return_tensors="pt").input_ids
    assert ids[0].tolist() == llm.tokenizer.encode(p)
    with torch.no_grad():
        torch.testing.assert_close(llm.model(ids), hf(ids).logits, atol=1e-4, rtol=1e-4)


def test_solves_held_out_problems(llm):
    probs = [make_problem(EVAL_SEED_BASE + 10_000 + i, difficulty=12) for i in range(6)]
    out = llm.generate([p.prompt for p in probs], SamplingParams(max_new_tokens=1500))
    correct = sum(score(p, c.text) for p, c in zip(probs, out.completions))
    assert correct >= 5, [c.text[-80:] for c in out.completions]
    # the model writes the chain of thought in the taught format, not just an answer
    assert all("wait , let me verify" in c.text for c in out.completions)
