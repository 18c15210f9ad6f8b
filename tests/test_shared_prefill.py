"""SharedPrefill: one dense prefill feeding several backends gives each exactly the state its own prefill builds."""

import pytest
import torch
from kv_helpers import decode, prefill, random_prompts, run_steps, tiny_model

from tessera.kv import make_cache
from tessera.kv.presses import NoPress
from tessera.kv.shared_prefill import SharedPrefill

BACKENDS = [("dense", {}), ("shadowkv", dict(sparse_budget=16, rank=8, outlier_chunks=2, local_chunks=1)),
            ("quest", dict(sparse_budget=32, page_size=8, local_tokens=8))]


def test_every_child_decodes_as_after_its_own_prefill():
    model = tiny_model()
    prompts = random_prompts([150, 97])  # a padded batch

    def cache(name, opts):
        return make_cache(name, model.config, len(prompts), torch.float32, "cpu", NoPress(), **opts)

    alone = [run_steps(model, cache(n, o), prompts, steps=5) for n, o in BACKENDS]
    children = [cache(n, o) for n, o in BACKENDS]
    first, lens = prefill(model, SharedPrefill(children[0], children[1:]), prompts)
    for a, c in zip(alone, children):  # each child decodes on its own from the one shared prefill
        torch.testing.assert_close(torch.stack([first] + decode(model, c, lens, steps=5)), a, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(alone[1][-1], alone[0][-1], atol=1e-3)  # the sparse backends really differ
    assert not torch.allclose(alone[2][-1], alone[0][-1], atol=1e-3)


def test_decode_through_shared_prefill_is_an_error():
    model = tiny_model()
    shared = SharedPrefill(make_cache("dense", model.config, 1, torch.float32, "cpu", NoPress()), [])
    with pytest.raises(RuntimeError, match="only prefills"):
        run_steps(model, shared, random_prompts([20]), steps=1)
