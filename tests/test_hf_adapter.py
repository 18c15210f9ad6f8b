"""transformers adapter: our presses (and the ShadowKV backend) inside `model.generate(..., cache=PressCache(...))`.

Tiny random configs of each supported family are built in-process (never downloaded)."""

import os
from pathlib import Path

import pytest
import torch
from kv_helpers import DECODE_PRESSES

from tessera.engine.engine import DEFAULT_MODEL
from tessera.kv.hf import PressCache
from tessera.kv.presses import make_press

transformers = pytest.importorskip("transformers")

FAMILIES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", {}),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {}),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", {"head_dim": 16}),
    "mistral": ("MistralConfig", "MistralForCausalLM", {"sliding_window": None}),
    # MoE: the cache is the attention's business; routed FFNs must not change what the adapter sees
    "mixtral": ("MixtralConfig", "MixtralForCausalLM", {"num_local_experts": 4, "num_experts_per_tok": 2}),
    "qwen3_moe": ("Qwen3MoeConfig", "Qwen3MoeForCausalLM", {"num_experts": 4, "num_experts_per_tok": 2,
                                                            "moe_intermediate_size": 32, "head_dim": 16}),
}


def tiny(family):
    cfg_cls, model_cls, extra = FAMILIES[family]
    torch.manual_seed(0)
    cfg = getattr(transformers, cfg_cls)(vocab_size=97, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                                         pad_token_id=0, eos_token_id=None, bos_token_id=1, **extra)
    return getattr(transformers, model_cls)(cfg).eval()


def prompts():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 97, (2, 14), generator=g)
    mask = torch.ones_like(ids)
    mask[1, :5] = 0  # left padding, as HF generate wants for decoder-only batches
    ids[1, :5] = 0
    return ids, mask


def generate(model, n, cache=None):
    ids, mask = prompts()
    kw = {} if cache is None else {"cache": cache}
    return model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                          pad_token_id=0, **kw)


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("press", DECODE_PRESSES)
def test_budget_above_length_is_token_identical(family, press):
    model = tiny(family)
    plain = generate(model, 40)
    ours = generate(model, 40, PressCache(model, make_press(press, budget=256, buffer=16, window=8)))
    assert torch.equal(plain, ours)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_compression_keeps_the_cache_bounded(family):
    model = tiny(family)
    press = make_press("rkv", budget=24, buffer=8, window=4)
    cache = PressCache(model, press)
    out = generate(model, 120, cache)
    assert out.shape[1] == 14 + 120
    assert press.compressions >= 2 * 12  # both rows, many times
    assert cache.physical_length() <= 24 + 8 and cache.dense.capacity() <= 24 + 8
    assert cache.get_seq_length() == 14 + 119  # logical length (the last token is not fed back)
    # logical positions: row 1 has 5 pads, so its newest token sits at position 9 + 119 - 1 + 1
    assert cache.dense.pos[0][0].max() == 14 + 118 and cache.dense.pos[0][1].max() == 9 + 118


def test_errors():
    model = tiny("llama")
    with pytest.raises(ValueError, match="maximum"):
        PressCache(model, make_press("rkv", budget=1024))
    cache = PressCache(model, None)
    generate(model, 3, cache)
    with pytest.raises(NotImplementedError):
        cache.reorder_cache(torch.tensor([0, 1]))


def long_prompts(n=150, pads=37):
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(3, 97, (2, n), generator=g)
    mask = torch.ones_like(ids)
    mask[1, :pads], ids[1, :pads] = 0, 0  # row 1: 113 real tokens after left padding
    return ids, mask


@pytest.mark.parametrize("family", list(FAMILIES))
def test_shadowkv_full_budget_and_rank_is_token_identical(family):
    """ShadowKV from HF generate: pre-RoPE keys recovered by rotating back; at full rank and a budget
    above the context it must pick exactly plain generate's tokens (left-padded batch)."""
    model = tiny(family)
    ids, mask = long_prompts()
    kw = dict(input_ids=ids, attention_mask=mask, max_new_tokens=12, min_new_tokens=12, do_sample=False, pad_token_id=0)
    cache = PressCache(model, kv="shadowkv", kv_options=dict(rank=32, sparse_budget=256, outlier_chunks=2))
    assert torch.equal(model.generate(**kw), model.generate(**kw, cache=cache))
    assert cache.dense.layers[0].sparse and cache.dense.hit_rate() > 0.8  # every chunk selected, then reused


def test_shadowkv_small_budget_keeps_keys_low_rank_and_errors():
    model = tiny("llama")
    ids, mask = long_prompts(400, 100)
    kw = dict(input_ids=ids, attention_mask=mask, max_new_tokens=8, min_new_tokens=8, do_sample=False, pad_token_id=0)
    cache, dense = PressCache(model, kv="shadowkv", kv_options=dict(rank=8, sparse_budget=16, outlier_chunks=2)), PressCache(model)
    out = model.generate(**kw, cache=cache)
    model.generate(**kw, cache=dense)
    assert out.shape[1] == 408 and cache.dense.host_nbytes() > cache.dense.bytes_transferred() > 0
    assert cache.dense.layers[0].u.shape[-1] == 8 and cache.nbytes() < 0.6 * dense.nbytes()
    with pytest.raises(ValueError, match="does not compose"):
        PressCache(model, make_press("rkv", budget=64), kv="shadowkv")
    with pytest.raises(ValueError, match="unknown shadowkv options"):
        PressCache(model, kv="shadowkv", kv_options={"budget": 64})
    with pytest.raises(NotImplementedError, match="dense backend"):
        cache.physical_length()


MODEL = Path(os.environ.get("TESSERA_TEST_MODEL", DEFAULT_MODEL))


@pytest.mark.skipif(not (MODEL / "model.safetensors").is_file(), reason="embedded model weights not present")
def test_embedded_model_matches_our_engine_with_compression():
    """HF generate + PressCache(rkv) and Tessera's engine + the same press pick the same tokens."""
    from transformers import AutoModelForCausalLM

    from tessera.config import SamplingParams
    from tessera.engine import LLM
    from tessera.tasks.reasoning import EVAL_SEED_BASE, make_problem

    llm = LLM.load(MODEL)
    hf = AutoModelForCausalLM.from_pretrained(MODEL, dtype=torch.float32).eval()
    prompt = llm.tokenizer.encode(make_problem(EVAL_SEED_BASE + 3, difficulty=6).prompt)
    n = 200
    ours = llm.generate([prompt], SamplingParams(max_new_tokens=n, ignore_eos=True),
                        press=make_press("rkv", budget=64, buffer=32)).completions[0].token_ids
    full_hf = hf.generate(input_ids=torch.tensor([prompt]), max_new_tokens=40, min_new_tokens=40, do_sample=False)
    lossless = PressCache(hf, make_press("rkv", budget=1024, buffer=32))
    assert torch.equal(full_hf, hf.generate(input_ids=torch.tensor([prompt]), max_new_tokens=40, min_new_tokens=40,
                                            do_sample=False, cache=lossless))
    press = make_press("rkv", budget=64, buffer=32)
    cache = PressCache(hf, press)
    out = hf.generate(input_ids=torch.tensor([prompt]), max_new_tokens=n, min_new_tokens=n, do_sample=False, cache=cache)
    assert press.compressions >= 4 and cache.physical_length() <= 64 + 32
    same = sum(a == b for a, b in zip(out[0, len(prompt):].tolist(), ours))
    assert same >= 0.95 * n  # fp32 on both sides; allow a rare near-tie in the kept set
