"""Quest backend (ShadowKV's baseline): exact at a budget above the context, page choice vs an
independent transcription of the min/max bound, padded batches, fallback, errors."""

import pytest
import torch
from kv_helpers import random_prompts, run_steps, tiny_model

from tessera.config import SamplingParams
from tessera.engine.engine import LLM
from tessera.kv import make_cache
from tessera.kv.cache import DenseCache, StepContext
from tessera.kv.presses import NoPress, make_press


def _caches(model, batch, **opts):
    cfg = model.config
    dense = DenseCache(cfg.num_hidden_layers, batch, cfg.num_key_value_heads, cfg.head_dim, torch.float32, "cpu")
    return dense, make_cache("quest", cfg, batch, torch.float32, "cpu", NoPress(), **opts)


@pytest.mark.parametrize("heads,kv_heads,head_dim", [(4, 2, 16), (4, 4, 24)])
def test_budget_above_the_context_equals_dense(heads, kv_heads, head_dim):
    model = tiny_model(heads, kv_heads, head_dim)
    prompts = random_prompts([150, 97, 20])  # the last row is all local window
    dense, quest = _caches(model, 3, sparse_budget=256, page_size=8, local_tokens=16)
    torch.testing.assert_close(run_steps(model, quest, prompts, 5), run_steps(model, dense, prompts, 5),
                               atol=2e-4, rtol=2e-4)
    assert quest.layers[0]["n_pages"].tolist() == [16, 10, 0]
    assert quest.nbytes() >= dense.nbytes() * 0.9  # Quest keeps everything resident


def test_small_budget_attends_exactly_the_pages_of_the_bound():
    """A step equals dense attention over the local window, the decoded token and the top pages of an
    independent loop transcription of Quest's bound sum_d max(q_d min_d, q_d max_d), max over the group."""
    model = tiny_model()
    dense, quest = _caches(model, 1, sparse_budget=16, page_size=8, local_tokens=16)
    prompts = random_prompts([203])  # 23 pages + 19 local tokens
    run_steps(model, dense, prompts, steps=0)
    run_steps(model, quest, prompts, steps=0)
    torch.manual_seed(3)
    q, k, v = torch.randn(1, 4, 1, 16), torch.randn(1, 2, 1, 16), torch.randn(1, 2, 1, 16)
    ctx = StepContext(torch.tensor([[203]]), torch.tensor([1]), False)
    with torch.inference_mode():
        out = quest.attend(0, q, k, v, ctx)
    kd, vd = dense.k[0][0, :, :203], dense.v[0][0, :, :203]  # [H, 203, D]
    for h in range(2):
        bound = []
        for p in range(23):
            page = kd[h, p * 8:(p + 1) * 8]
            lo, hi = page.min(0).values, page.max(0).values
            bound.append(max(sum(max(q[0, g, 0, d] * lo[d], q[0, g, 0, d] * hi[d]).item() for d in range(16))
                             for g in (2 * h, 2 * h + 1)))
        top = sorted(range(23), key=lambda p: -bound[p])[:2]
        toks = [t for p in sorted(top) for t in range(p * 8, p * 8 + 8)] + list(range(184, 203))
        kk, vv = torch.cat([kd[h, toks], k[0, h]], 0), torch.cat([vd[h, toks], v[0, h]], 0)
        for g in (2 * h, 2 * h + 1):
            ref = torch.softmax(q[0, g, 0] @ kk.T / 4.0, -1) @ vv
            torch.testing.assert_close(out[0, g, 0], ref, atol=1e-4, rtol=1e-4)


def test_padded_batch_rows_decode_as_if_alone_and_select():
    model = tiny_model()
    prompts = random_prompts([200, 30, 121])
    opts = dict(sparse_budget=16, page_size=8, local_tokens=16)
    _, quest = _caches(model, 3, **opts)
    tokens = torch.randint(0, 97, (4, 3), generator=torch.Generator().manual_seed(7))
    got = run_steps(model, quest, prompts, steps=4, tokens=tokens)
    for b, p in enumerate(prompts):
        _, alone = _caches(model, 1, **opts)
        ref = run_steps(model, alone, [p], steps=4, tokens=tokens[:, b:b + 1])[:, 0]
        torch.testing.assert_close(got[:, b], ref, atol=2e-4, rtol=2e-4)
    llm = LLM(model)
    sp = SamplingParams(max_new_tokens=6, ignore_eos=True)
    out = llm.generate(prompts, sp, kv="quest", kv_options={"sparse_budget": 512})  # budget > context: exact
    assert [c.token_ids for c in out.completions] == [c.token_ids for c in llm.generate(prompts, sp).completions]


def test_errors():
    cfg = tiny_model().config
    mk = lambda press=None, **o: make_cache("quest", cfg, 1, torch.float32, "cpu", press or NoPress(), **o)  # noqa: E731
    with pytest.raises(ValueError, match="multiple of page_size"):
        mk(sparse_budget=100)
    with pytest.raises(ValueError, match="unknown quest options"):
        mk(rank=8)
    with pytest.raises(ValueError, match="does not compose"):
        mk(make_press("streamingllm", budget=64))
    with pytest.raises(ValueError, match=">= 1"):
        mk(page_size=0)
