"""The transformers adapter across the declared transformers range (pyproject.toml): the same checks pass on
the oldest and the newest release. `make compat-transformers` runs this file in an environment per end of
the range; `make test` runs it on the installed release."""

import re
from pathlib import Path

import pytest
import torch

from tessera.kv.hf import PressCache, generate_kwargs
from tessera.kv.presses import make_press

transformers = pytest.importorskip("transformers")


def _declared_range() -> tuple[tuple[int, ...], tuple[int, ...]]:
    text = (Path(__file__).resolve().parent.parent / "pyproject.toml").read_text()
    spec = re.search(r'^\s*"(transformers[^"]*)"', text, re.M).group(1)
    lo = re.search(r">=\s*([\d.]+)", spec).group(1)
    hi = re.search(r"<\s*([\d.]+)", spec).group(1)
    return tuple(map(int, lo.split("."))), tuple(map(int, hi.split(".")))


def _version(v: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", v)[:3])


def test_installed_transformers_is_in_the_declared_range():
    lo, hi = _declared_range()
    v = _version(transformers.__version__)
    assert lo <= v < hi, (transformers.__version__, lo, hi)


def _tiny(family: str):
    cfg_cls, model_cls, extra = {
        "llama": ("LlamaConfig", "LlamaForCausalLM", {}),
        "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", {"head_dim": 16}),
    }[family]
    torch.manual_seed(0)
    cfg = getattr(transformers, cfg_cls)(vocab_size=97, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                                         pad_token_id=0, eos_token_id=None, bos_token_id=1, **extra)
    return getattr(transformers, model_cls)(cfg).eval()


def _generate(model, n, cache=None, length=14, pads=5):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 97, (2, length), generator=g)
    mask = torch.ones_like(ids)
    mask[1, :pads], ids[1, :pads] = 0, 0  # left padding, as HF generate wants for decoder-only batches
    kw = {} if cache is None else generate_kwargs(model, cache)
    return model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                          pad_token_id=0, **kw)


@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_press_cache_is_token_identical_when_nothing_is_evicted(family):
    model = _tiny(family)
    plain = _generate(model, 24)
    assert torch.equal(_generate(model, 24, PressCache(model, make_press("rkv", budget=256, buffer=16, window=8))),
                       plain)
    assert torch.equal(_generate(model, 24, PressCache(model, None, kv="shadowkv",
                                                       kv_options={"sparse_budget": 512, "rank": 32})), plain)


def test_press_cache_compresses_on_every_release():
    model = _tiny("llama")
    cache = PressCache(model, make_press("rkv", budget=24, buffer=8, window=4))
    out = _generate(model, 40, cache, length=30, pads=3)
    assert out.shape[1] == 30 + 40
    assert cache.physical_length() <= 24 + 8  # evicted for real: budget + buffer slots at most
    assert cache.get_seq_length() == 30 + 40 - 1  # logical length: evicted tokens still count
