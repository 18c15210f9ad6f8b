"""The step-level engine: continuous batching equals serving alone, per-request KV settings, abort, the
KV-memory cap and FIFO admission, and the cache merge it relies on."""

import pytest
import torch

from tessera.config import SamplingParams
from tessera.engine.kv_budget import cohort_bytes
from tessera.kv.cache import DenseCache, StepContext
from tessera.kv.presses import make_press


@pytest.fixture(scope="module")
def llm(tiny_llm):
    return tiny_llm(256)


PROMPTS = [[1, 5, 7, 9, 11], [1, 3], [1, 4, 4, 4, 4, 4, 4, 8, 9, 10, 12], [7, 8, 9, 10, 11, 12, 13, 14] * 3]


def alone(llm, prompt, sp, press=None):
    return llm.generate([prompt], sp, press=press).completions[0].token_ids


def run(engine, arrivals):
    """arrivals: step -> list of add_request kwargs; returns request id -> completion."""
    done, step = {}, 0
    while engine.has_unfinished() or any(s >= step for s in arrivals):
        for kw in arrivals.get(step, []):
            engine.add_request(**kw)
        for o in engine.step():
            if o.finished:
                done[o.request_id] = o.completion
        step += 1
    return done


def test_staggered_arrivals_equal_each_request_alone(llm):
    """Requests join a running batch at different steps and leave at different steps (greedy)."""
    sps = [SamplingParams(max_new_tokens=n, ignore_eos=True) for n in (14, 5, 9, 16)]
    arrivals = {0: [dict(prompt_ids=PROMPTS[0], params=sps[0], request_id="a")],
                3: [dict(prompt_ids=PROMPTS[1], params=sps[1], request_id="b"),
                    dict(prompt_ids=PROMPTS[2], params=sps[2], request_id="c")],
                9: [dict(prompt_ids=PROMPTS[3], params=sps[3], request_id="d")]}
    engine = llm.engine()
    done = run(engine, arrivals)
    for rid, p, sp in zip("abcd", PROMPTS, sps):
        assert done[rid].token_ids == alone(llm, p, sp), rid
        assert done[rid].finish_reason == "length"
    assert engine.kv_bytes() == 0 and not engine.running


def test_requests_with_different_presses_share_a_batch(llm):
    """Full KV, R-KV at two budgets and StreamingLLM in one running batch: each as if served alone."""
    sp = SamplingParams(max_new_tokens=36, ignore_eos=True)
    presses = [None, make_press("rkv", budget=24, buffer=16, window=8), make_press("rkv", budget=40, buffer=16,
               window=8), make_press("streamingllm", budget=24, buffer=16, window=8)]
    engine = llm.engine()
    arrivals = {0: [dict(prompt_ids=PROMPTS[i], params=sp, press=presses[i], request_id=str(i)) for i in (0, 1)],
                2: [dict(prompt_ids=PROMPTS[i], params=sp, press=presses[i], request_id=str(i)) for i in (2, 3)]}
    seen_cohorts = []
    done, step = {}, 0
    while engine.has_unfinished() or step <= 2:
        for kw in arrivals.get(step, []):
            engine.add_request(**kw)
        for o in engine.step():
            if o.finished:
                done[o.request_id] = o.completion.token_ids
        seen_cohorts.append(len(engine.running))
        step += 1
    assert max(seen_cohorts) == 4  # four KV settings decoding in one forward
    for i in range(4):  # presses keep no per-request state: the same objects serve the reference runs
        assert done[str(i)] == alone(llm, PROMPTS[i], sp, presses[i]), i
    assert presses[1].compressions > 0 and presses[3].compressions > 0


def test_abort_frees_kv_at_once(llm):
    engine = llm.engine()
    sp = SamplingParams(max_new_tokens=50, ignore_eos=True)
    for i, p in enumerate(PROMPTS[:3]):
        engine.add_request(p, sp, request_id=str(i))
    engine.add_request(PROMPTS[3], sp, request_id="waiting")
    engine.step()
    engine.step()
    full = engine.kv_bytes()
    assert engine.abort("1") and engine.kv_bytes() < full and engine.num_running == 3
    assert not engine.abort("1") and not engine.abort("nobody")
    for i in ("0", "2", "waiting"):
        assert engine.abort(i)
    assert engine.kv_bytes() == 0 and not engine.has_unfinished()


@pytest.mark.parametrize("press_args", [None, ("rkv", dict(budget=24, buffer=16, window=8)),
                                        ("h2o", dict(budget=20, buffer=8, window=4))])  # attention sums merge
def test_kv_cap_is_never_exceeded_and_admission_is_fifo(llm, press_args):
    sp = [SamplingParams(max_new_tokens=n, ignore_eos=True) for n in (24, 6, 14, 4, 20, 8, 10, 5)]
    press = make_press(press_args[0], **press_args[1]) if press_args else None
    probe = llm.engine()
    reqs = [probe.make_request(PROMPTS[i % 4], sp[i], press) for i in range(8)]
    cap = 3 * max(cohort_bytes([r.bound]) for r in reqs)  # about three requests at a time
    engine = llm.engine(kv_cap_bytes=cap)
    for i in range(8):
        engine.add_request(PROMPTS[i % 4], sp[i], press, request_id=str(i))
    first, order, peak_running, done = {}, 0, 0, {}
    while engine.has_unfinished():
        for o in engine.step():
            if o.request_id not in first:
                first[o.request_id] = order
            if o.finished:
                done[o.request_id] = o.completion.token_ids
        order += 1
        assert engine.kv_bytes() <= cap
        peak_running = max(peak_running, engine.num_running)
    assert engine.stats.peak_kv_bytes <= cap
    assert 1 < peak_running < 8  # the cap made some wait
    firsts = [first[str(i)] for i in range(8)]
    assert firsts == sorted(firsts)  # admitted in arrival order
    for i in range(8):
        assert done[str(i)] == alone(llm, PROMPTS[i % 4], sp[i], press), i


def test_rkv_fits_more_requests_under_one_cap(tiny_llm):
    llm = tiny_llm(1024)
    sp = SamplingParams(max_new_tokens=1000, ignore_eos=True)
    rkv = make_press("rkv", budget=24, buffer=16, window=8)
    need = cohort_bytes([llm.engine().make_request(PROMPTS[0], sp).bound])
    most = {}
    for name, press in (("full", None), ("rkv", rkv)):
        engine = llm.engine(kv_cap_bytes=2 * need)
        for _ in range(8):
            engine.add_request(PROMPTS[0], sp, press)
        most[name] = 0
        for _ in range(3):
            engine.step()
            most[name] = max(most[name], engine.num_running)
    assert most["full"] == 2 and most["rkv"] >= 6


def test_rkv_requests_reserve_what_they_hold_and_share_one_cache(tiny_llm):
    """An R-KV request reserves max(budget, prompt) + buffer slots whatever its max tokens, a full-KV one its
    prompt + max tokens; under a cap of n R-KV reservations exactly n run at once, the KV measured after every
    step stays under the cap and reaches it (the reservation is what the cache really holds), rows admitted
    at different steps share one cache, and every output equals the request served alone."""
    llm = tiny_llm(1024)
    budget, buffer, n = 24, 16, 5
    rkv = make_press("rkv", budget=budget, buffer=buffer, window=8)
    sps = [SamplingParams(max_new_tokens=m, ignore_eos=True) for m in (60, 23, 41, 60, 30, 52, 17, 45, 38)]
    prompt = PROMPTS[2]  # 11 tokens, under the budget
    probe = llm.engine()
    assert probe.make_request(prompt, sps[0]).bound.slots == len(prompt) + 60
    bounds = {probe.make_request(prompt, sp, rkv).bound for sp in sps}
    assert len(bounds) == 1 and next(iter(bounds)).slots == budget + buffer
    one = cohort_bytes([next(iter(bounds))])
    cap = n * one + one // 2  # room for n requests, not n + 1
    engine = llm.engine(kv_cap_bytes=cap)
    for i, sp in enumerate(sps):
        engine.add_request(prompt, sp, rkv, request_id=str(i))
    done, first, step, most, cohorts = {}, {}, 0, 0, 0
    while engine.has_unfinished():
        for o in engine.step():
            first.setdefault(o.request_id, step)
            if o.finished:
                done[o.request_id] = o.completion.token_ids
        assert engine.kv_bytes() <= cap
        most, cohorts, step = max(most, engine.num_running), max(cohorts, len(engine.running)), step + 1
    assert most == n and engine.stats.peak_kv_bytes == n * one
    assert len(set(first.values())) > 2 and cohorts == 1  # admitted in waves, merged into one cache
    assert rkv.compressions > 0
    for i in (0, 1, 5, 8):
        assert done[str(i)] == alone(llm, prompt, sps[i], rkv), i


def test_request_larger_than_the_cap_is_refused(llm):
    engine = llm.engine(kv_cap_bytes=1000)
    with pytest.raises(ValueError, match="could never be admitted"):
        engine.add_request(PROMPTS[0], SamplingParams(max_new_tokens=8))


def test_generate_batches_continuously_under_a_cap(llm):
    sp = SamplingParams(max_new_tokens=12, ignore_eos=True)
    free = llm.generate(PROMPTS, sp)
    need = cohort_bytes([llm.engine().make_request(PROMPTS[3], sp).bound])
    llm.kv_cap_bytes = 2 * need
    try:
        capped = llm.generate(PROMPTS, sp)
    finally:
        llm.kv_cap_bytes = None
    assert [c.token_ids for c in capped.completions] == [c.token_ids for c in free.completions]
    assert capped.stats.peak_kv_bytes <= 2 * need < free.stats.peak_kv_bytes


def test_dense_cache_extend_keeps_rows_and_pads(llm):
    cfg = llm.config
    mk = lambda b: DenseCache(cfg.num_hidden_layers, b, cfg.num_key_value_heads, cfg.head_dim, torch.float32, "cpu",
                              growth=4)
    a, b = mk(2), mk(1)
    for cache, lens in ((a, [3, 5]), (b, [9])):
        B, S = len(lens), max(lens)
        k = torch.randn(B, cfg.num_key_value_heads, S, cfg.head_dim)
        q = torch.randn(B, cfg.num_attention_heads, S, cfg.head_dim)
        ctx = StepContext(torch.arange(S).expand(B, S), torch.tensor(lens), True)
        for layer in range(cfg.num_hidden_layers):
            cache.attend(layer, q, k, k + 1, ctx)
    ka, kb = a.k[0].clone(), b.k[0].clone()
    a.extend(b)
    assert a.B == 3 and a.lens[0].tolist() == [3, 5, 9] and a.capacity(0) == b.capacity(0)
    assert torch.equal(a.k[0][:2, :, : ka.shape[2]], ka) and torch.equal(a.k[0][2:], kb)
    assert (a.pos[0][0, :, ka.shape[2]:] == -1).all()
    a.select(torch.tensor([2]))
    assert torch.equal(a.k[0], kb[:, :, :9])
