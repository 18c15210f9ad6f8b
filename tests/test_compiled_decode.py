"""The compiled decode step (`LLM(..., compile=True)`) gives the eager engine's tokens, through continuous
batching (rows joining and leaving: the batch size changes), and steps aside for caches it cannot take."""

import copy

import pytest
import torch

from tessera.config import ModelConfig, SamplingParams
from tessera.engine import LLM
from tessera.engine.compiled_decode import CompiledDecode
from tessera.kv.cache import DenseCache, StepContext
from tessera.kv.presses import make_press
from tessera.layers import experts as X
from tessera.models import CausalLM


@pytest.fixture(scope="module")
def moe_model():
    """Two layers, GQA 4/2: layer 0 routed (4 experts, top-2, a gated shared expert), layer 1 dense."""
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=61, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=256,
                      eos_token_id=2, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
                      shared_expert_intermediate_size=48, mlp_only_layers=[1])
    return CausalLM(cfg).eval()


PROMPTS = [[5, 9, 13, 17, 21, 25, 29], [7, 11], [3, 4, 5, 6, 8, 10, 12, 14, 16, 18, 20]]
NEW = [20, 9, 14]  # different lengths: rows retire at different steps


def _alone(llm, prompt, n):
    return llm.generate([prompt], SamplingParams(max_new_tokens=n, ignore_eos=True)).completions[0].token_ids


def test_compiled_steps_give_the_eager_tokens_while_the_batch_changes(moe_model):
    """After `compile_now`, rows joining and leaving and a growing cache run without one recompile (a
    recompile is tens of seconds in the middle of serving): `fail_on_recompile` turns one into an error."""
    eager, fast = LLM(moe_model), LLM(moe_model, compile=True)
    want = [_alone(eager, p, n) for p, n in zip(PROMPTS, NEW)]
    fast.compile_now()
    warm = fast.compiled.steps
    engine = fast.engine()
    with torch.compiler.set_stance("fail_on_recompile"):
        got, ids = _run_joining(engine)
    assert [got[i] for i in ids] == want
    assert fast.compiled.steps - warm == engine.stats.decode_steps == max(NEW) - 1


def _run_joining(engine):  # one request alone for 3 steps, then two more join: batch 1, 3, 2, 1
    ids = [engine.add_request(PROMPTS[0], SamplingParams(max_new_tokens=NEW[0], ignore_eos=True))]
    for _ in range(3):  # batch 1 (its own graph) ...
        engine.step()
    ids += [engine.add_request(p, SamplingParams(max_new_tokens=n, ignore_eos=True))
            for p, n in zip(PROMPTS[1:], NEW[1:])]
    got = {}
    while engine.has_unfinished():  # ... then 3, 2 and 1 rows
        for out in engine.step():
            if out.finished:
                got[out.request_id] = out.completion.token_ids
    return got, ids


def test_a_cache_with_press_state_in_attention_runs_eagerly(moe_model):
    """R-KV keeps a window of queries inside attention: not eligible, so the eager forward runs it."""
    fast = LLM(moe_model, compile=True)
    press = make_press("rkv", budget=8, buffer=4, window=2)
    sp = SamplingParams(max_new_tokens=12, ignore_eos=True)
    got = fast.generate([PROMPTS[2]], sp, press=press).completions[0].token_ids
    assert got == LLM(moe_model).generate([PROMPTS[2]], sp, press=press).completions[0].token_ids
    assert fast.compiled.steps == 0


def test_quantized_or_sharded_models_are_refused_in_one_line(moe_model):
    from tessera.layers.parallel_linear import ColumnParallelLinear

    class Sharded(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = ColumnParallelLinear.__new__(ColumnParallelLinear)  # its type is what is checked
            torch.nn.Module.__init__(self.proj)

    with pytest.raises(ValueError, match="not for quantized, tensor- or expert-parallel models"):
        CompiledDecode(Sharded())


def test_a_press_that_evicts_between_steps_runs_compiled(moe_model):
    """StreamingLLM keeps no state inside attention: the compiled step runs on the cache it shrinks."""
    fast = LLM(moe_model, compile=True)
    sp = SamplingParams(max_new_tokens=24, ignore_eos=True)
    want = LLM(moe_model).generate(PROMPTS, sp, press=make_press("streamingllm", budget=12, buffer=4, window=2)).completions
    got = fast.generate(PROMPTS, sp, press=make_press("streamingllm", budget=12, buffer=4, window=2)).completions
    assert [c.token_ids for c in got] == [c.token_ids for c in want]
    assert fast.compiled.steps == 23


def test_compile_now_needs_compile_true(moe_model):
    with pytest.raises(RuntimeError, match="without compile=True"):
        LLM(moe_model).compile_now()


@torch.inference_mode()
def test_one_step_equals_the_dense_cache_when_layers_hold_different_lengths(moe_model, monkeypatch):
    """The graph's cache writes and masked attention against `DenseCache.attend`, after a press-like eviction
    left layer 0 shorter than layer 1 (the compiled step attends every layer over the longest span); the
    routed experts as the opaque grouped op, which graphs take for many (token, slot) pairs (the tests above
    run the fused gathered form, the choice for few, against the eager engine's tokens; a second compile of
    this test for it cost ~20 s of CI)."""
    monkeypatch.setattr(X, "use_gathered", lambda *a: False)
    torch.manual_seed(1)
    lay = moe_model.kv_layout()
    eager = DenseCache(lay.num_layers, 2, lay.num_kv_heads, lay.head_dim, torch.float32, "cpu")
    lens = torch.tensor([9, 6])
    prefill = StepContext(positions=torch.arange(9).expand(2, 9), new_lens=lens, is_prefill=True)
    moe_model(torch.randint(3, 60, (2, 9)), prefill.positions, eager, prefill)
    eager.keep(0, torch.arange(2), torch.tensor([0, 2, 3, 5]).expand(2, lay.num_kv_heads, 4))  # layer 0: 4 slots
    fast = copy.deepcopy(eager)
    tok, pos = torch.tensor([7, 8]), lens.clone()
    step = StepContext(positions=pos[:, None], new_lens=torch.ones(2, dtype=torch.long), is_prefill=False)
    want = moe_model(tok[:, None], pos[:, None], eager, step)[:, -1]
    opaque, run = [], X.run  # the opaque op runs `X.run` eagerly; the gathered form is inside the graph
    monkeypatch.setattr(X, "run", lambda *a, **kw: opaque.append(1) or run(*a, **kw))
    got = CompiledDecode(moe_model)(fast, tok, pos)
    assert opaque  # the grouped op ran, eagerly, from inside the graph
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    for a, b in zip(fast.lens, eager.lens):
        assert a.tolist() == b.tolist()
    # a spare slot past the attended span in every layer: a graph traced with capacity == span would guard on
    # that equality and recompile at the first step without it
    assert all(fast.capacity(li) > int(fast.lens[li].max()) for li in range(fast.L))
    for li, n in enumerate((5, 10)):  # the new token landed where the eager cache put it
        torch.testing.assert_close(fast.k[li][:, :, :n], eager.k[li][:, :, :n])
        assert fast.pos[li][:, :, :n].tolist() == eager.pos[li][:, :, :n].tolist()
