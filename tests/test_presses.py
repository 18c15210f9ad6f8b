"""Decode-time presses: R-KV against an independent transcription of its formula, the scheduler
(per-sequence triggers, real memory release, logical positions), the baselines, bad input."""

import math

import pytest
import torch
from kv_helpers import DECODE_PRESSES

from tessera.config import SamplingParams
from tessera.kv.cache import DenseCache, StepContext
from tessera.kv.press_target import PressTarget
from tessera.kv.presses import (
    PRESSES,
    H2OPress,
    NoPress,
    RKVPress,
    ScorerPress,
    SnapKVPress,
    StreamingLLMPress,
    make_press,
    register_press,
)


# ---- independent transcription of R-KV, plain loops ---------------------------------------------
# Importance, redundancy and their mix as the authors' code computes them (arXiv 2505.24133;
# github.com/Zefan-Cai/R-KV @d15c976, `rkv/compression/r1_kv.py` and `rkv/utils.py::cal_similarity`).
def _softmax(xs):
    m = max(xs)
    e = [math.exp(x - m) for x in xs]
    return [v / sum(e) for v in e]


def _cos(a, b):
    dot = sum(x * y for x, y in zip(a, b))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def reference_rkv_scores(K, Q, alpha, lam=0.1, kernel=7, tau=0.5):
    """K: n keys (lists) of one KV head; Q: [group][alpha] query vectors. -> Z over the n-alpha past."""
    n, d = len(K), len(K[0])
    m = n - alpha
    # importance: per window query, max over the group of raw logits, softmax over past keys
    rows = []
    for t in range(alpha):
        logits = [max(sum(q[t][x] * K[j][x] for x in range(d)) / math.sqrt(d) for q in Q) for j in range(m)]
        rows.append(_softmax(logits))
    a = [sum(r[j] for r in rows) / alpha for j in range(m)]
    h = kernel // 2
    imp = [max(a[max(0, j - h): j + h + 1]) for j in range(m)]
    # redundancy over all n keys
    S = [[0.0 if i == j else _cos(K[i], K[j]) for j in range(n)] for i in range(n)]
    for i in range(n):
        similar = [j for j in range(n) if S[i][j] > tau]
        S[i][max(similar) if similar else 0] = 0.0
    col = [sum(S[i][j] for i in range(n)) / n for j in range(n)]
    red = _softmax(col)[:m]
    return [lam * imp[j] - (1 - lam) * red[j] for j in range(m)]


def _planted_keys(n, d, gen):
    k = torch.randn(n, d, generator=gen)
    for i in range(0, n - 1, 3):  # near-duplicates of earlier tokens, some well after them
        j = int(torch.randint(i + 1, n, (1,), generator=gen))
        k[j] = k[i] + 0.1 * torch.randn(d, generator=gen)
    return k


def _filled_cache(lens, Hkv, Hq, D, alpha, gen):
    """A cache whose rows hold lens[b] tokens with planted duplicates and alpha cached queries."""
    B, T = len(lens), max(lens)
    c = DenseCache(1, B, Hkv, D, torch.float32, "cpu")
    c.request_queries(alpha)
    k = torch.stack([torch.stack([_planted_keys(T, D, gen) for _ in range(Hkv)]) for _ in range(B)])
    v = torch.randn(B, Hkv, T, D, generator=gen)
    q = torch.randn(B, Hq, T, D, generator=gen)
    c.attend(0, q, k, v, StepContext(torch.arange(T).expand(B, T), torch.tensor(lens), True))
    return c


@pytest.mark.parametrize("Hq,Hkv", [(2, 2), (4, 2), (8, 2), (4, 1)])
@pytest.mark.parametrize("budget", [12, 20, 33])
def test_rkv_keeps_exactly_the_reference_token_set(Hq, Hkv, budget):
    gen = torch.Generator().manual_seed(budget * 100 + Hq * 10 + Hkv)
    alpha, D, lens = 4, 8, [40, 52, 45]
    c = _filled_cache(lens, Hkv, Hq, D, alpha, gen)
    press = RKVPress(budget=budget, buffer=8, window=alpha)
    rows = torch.tensor([0, 1, 2])
    kept = press.select(c, 0, rows)  # [3, Hkv, budget]
    G = Hq // Hkv
    for b, n in enumerate(lens):
        for h in range(Hkv):
            K = c.k[0][b, h, :n].tolist()
            Q = [c.window_queries(0, torch.tensor([b]))[0, h * G + g].tolist() for g in range(G)]
            z = reference_rkv_scores(K, Q, alpha)
            order = sorted(range(n - alpha), key=lambda j: -z[j])
            want = set(order[: budget - alpha]) | set(range(n - alpha, n))
            got = set(kept[b, h].tolist())
            assert len(got) == budget
            # the boundary must not be a numerical tie, or the test says nothing
            assert z[order[budget - alpha - 1]] - z[order[budget - alpha]] > 1e-7
            assert got == want, (b, h, sorted(got ^ want))


def test_rkv_evicts_the_older_duplicate():
    """Redundancy direction: of two identical keys the older one is the more redundant."""
    gen = torch.Generator().manual_seed(0)
    c = _filled_cache([30], 1, 1, 8, 4, gen)
    c.k[0][0, 0, 25] = c.k[0][0, 0, 3]  # token 25 repeats token 3
    press = RKVPress(budget=20, buffer=8, window=4, lam=0.0)  # redundancy only
    kept = set(press.select(c, 0, torch.tensor([0]))[0, 0].tolist())
    assert 25 in kept and 3 not in kept


# ---- scheduler ----------------------------------------------------------------------------
def protocol_only(cache):
    """`cache` seen through exactly the PressTarget methods: a press reaching past the protocol fails."""

    def forward(name):
        return lambda self, *args: getattr(cache, name)(*args)

    methods = {m: forward(m) for m in PressTarget.__abstractmethods__ if m != "num_layers"}
    return type("ProtocolOnly", (PressTarget,), {**methods, "num_layers": cache.num_layers})()


def _decode_step(c, gen, active=None):
    B, H, D = c.B, c.H, c.D
    pos = c.pos[0].amax((1, 2)).long() + 1  # next logical position of each row
    Hq = c.window_queries(0, torch.arange(B)).shape[1] if c.ring is not None else H
    q, k, v = (torch.randn(B, s, 1, D, generator=gen) for s in (Hq, H, H))
    c.attend(0, q, k, v, StepContext(pos[:, None], torch.ones(B, dtype=torch.long), False))


@pytest.mark.parametrize("name", DECODE_PRESSES)
@pytest.mark.parametrize("lens", [[30, 10], [12, 10]])
def test_schedule_bounds_memory_and_keeps_positions(name, lens):
    """lens [30, 10]: row 0 starts above the budget, row 1 far below it (own schedules)."""
    gen = torch.Generator().manual_seed(1)
    budget, buffer, alpha = 24, 8, 4
    press = make_press(name, budget=budget, buffer=buffer, window=alpha)
    B, T, H, D = 2, 30, 2, 8
    c = DenseCache(1, B, H, D, torch.float32, "cpu")
    target = protocol_only(c)
    press.prepare(target)
    assert (c.ring is not None) == press.uses_queries and (c.sums is not None) == press.uses_attention
    k = torch.randn(B, H, T, D, generator=gen)
    c.attend(0, torch.randn(B, 4, T, D, generator=gen), k, torch.randn(B, H, T, D, generator=gen),
             StepContext(torch.arange(T).expand(B, T), torch.tensor(lens), True))
    press.after_prefill(target, torch.zeros(B, dtype=torch.long))
    assert c.lens[0].tolist() == lens  # nothing evicted at prefill, not even a prompt above the budget
    assert torch.equal(c.k[0][0, :, : lens[0]], k[0, :, : lens[0]])
    ring = c.ring.nbytes() if c.ring is not None else 0  # fixed: W queries per row
    per_slot = (c.nbytes() - ring) / c.capacity()
    seen_compress = [False, False]
    for step in range(1, 97):
        before = c.lens[0].clone()
        _decode_step(c, gen)
        press.after_decode(target, torch.full((B,), step))
        after = c.lens[0]
        for b in range(B):
            if after[b] < before[b] + 1:
                seen_compress[b] = True
                assert step % buffer == 0 and after[b] == budget  # only at triggers, exactly B
        # Tensors really hold at most B + buffer slots: always when prompts fit the budget, and
        # from the first compression on otherwise (a longer prompt is not evicted at prefill).
        if max(lens) <= budget or step >= 16:
            assert c.capacity() <= budget + buffer
            assert c.nbytes() <= (budget + buffer) * per_slot + ring  # ... and nbytes() reports it
        assert c.capacity() <= max(budget, max(lens)) + buffer  # never more than a row can use
        # logical positions: every row holds distinct true positions, the newest is prompt + step - 1
        for b in range(B):
            p = c.pos[0][b, :, : int(after[b])]
            assert int(p.max()) == lens[b] + step - 1
            assert all(len(set(ph.tolist())) == len(ph) for ph in p)
            if press.order == "position":
                assert torch.all(p[:, 1:] > p[:, :-1])  # kept in position order
            else:  # score order (the R-KV authors' layout): the window is still the newest tokens, last
                assert torch.all(p[:, -alpha:] == lens[b] + step - alpha + torch.arange(alpha))
    assert all(seen_compress)


def test_rows_trigger_on_their_own_decoded_count():
    gen = torch.Generator().manual_seed(2)
    c = _filled_cache([40, 40], 2, 4, 8, 4, gen)
    press = RKVPress(budget=20, buffer=8, window=4)
    press.after_decode(c, torch.tensor([8, 5]))  # row 1 is not at a multiple of its buffer
    assert c.lens[0].tolist() == [20, 40]
    press.after_decode(c, torch.tensor([9, 16]))
    assert c.lens[0].tolist() == [20, 20]


def test_window_is_always_kept_and_rows_do_not_share_scores():
    gen = torch.Generator().manual_seed(3)
    c = _filled_cache([36, 36], 2, 4, 8, 4, gen)
    alone = _filled_cache([36, 36], 2, 4, 8, 4, torch.Generator().manual_seed(3))
    alone.k[0][1] = torch.randn_like(alone.k[0][1])  # a different row 1 ...
    alone.select(torch.tensor([0]))  # ... and then no row 1 at all
    both = RKVPress(budget=16, buffer=8, window=4).select(c, 0, torch.tensor([0, 1]))
    one = RKVPress(budget=16, buffer=8, window=4).select(alone, 0, torch.tensor([0]))
    assert torch.equal(both[0], one[0])  # row 0's choice does not depend on row 1
    assert torch.equal(both[:, :, -4:], torch.arange(32, 36).expand(2, 2, 4))


def test_streamingllm_keeps_sinks_and_recent():
    gen = torch.Generator().manual_seed(4)
    c = _filled_cache([40], 2, 2, 8, 4, gen)
    kept = StreamingLLMPress(budget=16, buffer=8, window=4, sinks=4).select(c, 0, torch.tensor([0]))
    assert kept[0, 0].tolist() == [0, 1, 2, 3] + list(range(28, 40))


def test_h2o_keeps_heavy_hitters_and_recent():
    gen = torch.Generator().manual_seed(5)
    c = DenseCache(1, 1, 1, 8, torch.float32, "cpu")
    c.request_attention_sums()
    T = 40
    k = torch.randn(1, 1, T, 8, generator=gen)
    k[0, 0, 7] = 30 * torch.ones(8)  # a key every query attends to
    q = torch.ones(1, 1, T, 8)
    c.attend(0, q, k, torch.randn(1, 1, T, 8), StepContext(torch.arange(T)[None], torch.tensor([T]), True))
    # accumulated attention equals the explicit causal softmax sums
    probs = torch.softmax((q[0, 0] @ k[0, 0].T / 8**0.5).masked_fill(torch.ones(T, T).triu(1).bool(), -1e9), -1)
    torch.testing.assert_close(c.attention_sums(0, torch.tensor([0]), T)[0, 0], probs.sum(0))
    kept = H2OPress(budget=12, buffer=8, window=4, recent=6).select(c, 0, torch.tensor([0]))[0, 0].tolist()
    assert 7 in kept and kept[-6:] == list(range(34, 40)) and len(kept) == 12


def test_snapkv_sums_window_attention_and_avg_pools():
    gen = torch.Generator().manual_seed(6)
    c = _filled_cache([30], 1, 2, 8, 4, gen)
    K, Q = c.k[0][0, 0, :30], c.window_queries(0, torch.tensor([0]))[0]  # [30, 8], [2, 4, 8]
    logits = (Q @ K[:26].T / 8**0.5).amax(0)  # [4, 26] GQA max
    a = torch.softmax(logits, -1).sum(0)
    pooled = torch.tensor([sum(a[max(0, j - 2): j + 3]) / 5 for j in range(26)])
    want = set(pooled.topk(8).indices.tolist()) | set(range(26, 30))
    got = set(SnapKVPress(budget=12, buffer=8, window=4).select(c, 0, torch.tensor([0]))[0, 0].tolist())
    assert got == want


def test_registry_holds_every_press_once():
    assert {"rkv", "snapkv", "streamingllm", "h2o", "rkv-snapkv", "rkv-h2o", "rkv-published"} <= set(DECODE_PRESSES)
    assert PRESSES["none"] is PRESSES["full"] is NoPress and not NoPress.acts_on_cache
    with pytest.raises(ValueError, match="taken"):
        register_press("rkv")(type("Other", (ScorerPress,), {}))


# ---- engine integration -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def llm(tiny_llm):
    return tiny_llm(256)


PROMPTS = [[1, 5, 7, 9, 11], [1, 3, 4, 4, 4, 4, 4, 8, 9, 10, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21]]


@pytest.mark.parametrize("name", DECODE_PRESSES)
def test_engine_budget_above_length_is_lossless(llm, name):
    sp = SamplingParams(max_new_tokens=40, ignore_eos=True)
    full = llm.generate(PROMPTS, sp)
    pressed = llm.generate(PROMPTS, sp, press=make_press(name, budget=200, buffer=16, window=8))
    assert [c.token_ids for c in pressed.completions] == [c.token_ids for c in full.completions]


def test_engine_compresses_and_saves_memory(llm):
    sp = SamplingParams(max_new_tokens=200, ignore_eos=True)
    full = llm.generate(PROMPTS, sp)
    press = make_press("rkv", budget=32, buffer=16, window=8)
    out = llm.generate(PROMPTS, sp, press=press)
    assert all(len(c.token_ids) == 200 for c in out.completions)
    assert press.compressions >= 2 * 10  # both rows, every 16 tokens once above the budget
    assert out.stats.peak_kv_bytes < 0.4 * full.stats.peak_kv_bytes


def test_bad_settings_are_clear_errors(llm):
    with pytest.raises(ValueError, match="larger than the window"):
        make_press("rkv", budget=8, window=8)
    with pytest.raises(ValueError, match="buffer"):
        make_press("snapkv", budget=64, buffer=4, window=8)
    with pytest.raises(ValueError, match="unknown press"):
        make_press("rkvv")
    with pytest.raises(ValueError, match="maximum"):
        llm.generate(PROMPTS, SamplingParams(max_new_tokens=4), press=make_press("h2o", budget=300))
