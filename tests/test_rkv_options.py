"""The R-KV authors' baselines (SnapKV = R-KV importance only, H2O = the last query's attention) and the
faithfulness options of R-KV (kept-slot order, lambda, bf16 scores): each against an independent
transcription of the authors' code, and each shown to change what it should."""

import math

import pytest
import torch
import torch.nn.functional as F
from test_presses import _filled_cache, reference_rkv_scores

from tessera.kv.cache import StepContext
from tessera.kv.presses import PublishedRKVPress, RKVPress, make_press

ROWS = torch.tensor([0])


# ---- the authors' baselines ----------------------------------------------------------------------
def test_authors_snapkv_is_rkv_at_lambda_one():
    c = _filled_cache([40, 31], 2, 4, 8, 4, torch.Generator().manual_seed(11))
    rows = torch.tensor([0, 1])
    got = make_press("rkv-snapkv", budget=16, buffer=8, window=4).select(c, 0, rows)
    assert torch.equal(got, RKVPress(budget=16, buffer=8, window=4, lam=1.0).select(c, 0, rows))
    # ... and an independent transcription (importance only) agrees, head by head
    for h in range(2):
        K = c.k[0][0, h, :40].tolist()
        Q = [c.window_queries(0, ROWS)[0, h * 2 + g].tolist() for g in range(2)]
        z = reference_rkv_scores(K, Q, 4, lam=1.0)
        kept = set(got[0, h].tolist())
        assert set(range(36, 40)) <= kept and len(kept) == 16
        # a top-k up to ties (max-pool 7 makes plateaus of equal scores)
        assert min(z[j] for j in kept - set(range(36, 40))) >= max(z[j] for j in set(range(36)) - kept) - 1e-9
    # not the SnapKV paper's rule (sum + avg-pool 5), which our `snapkv` press is
    assert not torch.equal(got, make_press("snapkv", budget=16, buffer=8, window=4).select(c, 0, rows))


def test_authors_h2o_scores_with_the_last_query_only():
    c = _filled_cache([40], 2, 4, 8, 4, torch.Generator().manual_seed(12))
    press = make_press("rkv-h2o", budget=16, buffer=8, window=4)
    kept = press.select(c, 0, ROWS)
    K, Q = c.k[0][0, :, :36], c.window_queries(0, ROWS)[0]  # [2, 36, 8], [4 q-heads, 4, 8]
    for h in range(2):
        logits = torch.maximum(Q[h * 2, -1] @ K[h].T, Q[h * 2 + 1, -1] @ K[h].T) / math.sqrt(8)  # GQA max
        want = set(torch.softmax(logits, -1).topk(12).indices.tolist()) | set(range(36, 40))
        assert set(kept[0, h].tolist()) == want
    # earlier window queries do not matter, the newest does
    c.ring.q[0][:, :, :-1] = torch.randn_like(c.ring.q[0][:, :, :-1])
    assert torch.equal(press.select(c, 0, ROWS), kept)
    c.ring.q[0][:, :, -1] = torch.randn_like(c.ring.q[0][:, :, -1])
    assert not torch.equal(press.select(c, 0, ROWS), kept)


# ---- kept-slot order --------------------------------------------------------------------------------
def _compress(c, press):
    idx = press.select(c, 0, ROWS)
    c.keep(0, ROWS, idx)
    return idx


def _append(c, n, gen):
    Hq = c.window_queries(0, ROWS).shape[1]
    for _ in range(n):
        p = int(c.pos[0][0].max()) + 1
        q, k, v = torch.randn(1, Hq, 1, 8, generator=gen), torch.randn(1, 2, 1, 8, generator=gen), torch.randn(1, 2, 1, 8)
        if p % 3 == 0:  # a near-repeat of an old key: the redundancy term has work to do
            k[0, :, 0] = c.k[0][0, :, p % 11] + 0.05 * torch.randn(2, 8, generator=gen)
        c.attend(0, q, k, v, StepContext(torch.tensor([[p]]), torch.ones(1, dtype=torch.long), False))


def _two_compressions(order, seed=13):
    """40 tokens -> 20, 12 more -> 20; -> (cache, slots kept each time, keys and window queries before each)."""
    gen = torch.Generator().manual_seed(seed)
    c = _filled_cache([40], 2, 4, 8, 4, gen)
    press = RKVPress(budget=20, buffer=8, window=4, order=order)
    before = [(c.k[0][0, :, :40].clone(), c.window_queries(0, ROWS)[0])]
    first = _compress(c, press)
    _append(c, 12, torch.Generator().manual_seed(seed + 1))
    before.append((c.k[0][0, :, :32].clone(), c.window_queries(0, ROWS)[0]))
    second = _compress(c, press)
    return c, (first, second), before


def test_score_order_keeps_the_topk_order_and_matches_the_reference_layout():
    _, kept, before = _two_compressions("score")
    # each compression, run on the slots as they lie (after the first one, in score order: max-pool neighbours
    # and the "most recent similar key" are slot neighbours there), keeps the top-k best first, then the window
    for (K, Q), idx, n in zip(before, kept, (40, 32)):
        for h in range(2):
            z = reference_rkv_scores(K[h].tolist(), [Q[h * 2 + g].tolist() for g in range(2)], 4)
            order = sorted(range(n - 4), key=lambda j: -z[j])
            assert z[order[15]] - z[order[16]] > 1e-7  # no tie at the boundary
            assert idx[0, h, :16].tolist() == order[:16] and idx[0, h, 16:].tolist() == list(range(n - 4, n))
    assert not torch.all(kept[0][0, :, 1:16] > kept[0][0, :, :15])  # not position-sorted


def test_slot_order_changes_the_second_compression():
    cs, (f_s, _), _ = _two_compressions("score")
    cp, (f_p, _), _ = _two_compressions("position")
    # the first compression keeps the same tokens either way ...
    assert _kept_positions_sets(f_s) == _kept_positions_sets(f_p)
    # ... the second does not: slot order fed the max-pool and the similar-key rule
    assert [set(cs.pos[0][0, h, :20].tolist()) for h in range(2)] != [set(cp.pos[0][0, h, :20].tolist()) for h in range(2)]


def _kept_positions_sets(idx):  # at the first compression slots are positions
    return [set(h.tolist()) for h in idx[0]]


# ---- lambda and bf16 ---------------------------------------------------------------------------------
def test_lambda_default_is_the_readme_value_and_the_code_value_is_an_option():
    assert make_press("rkv").lam == 0.1 and make_press("rkv-published").lam == 0.07
    c = _filled_cache([60], 1, 2, 8, 4, torch.Generator().manual_seed(14))
    K, Q = c.k[0][0, 0, :60].tolist(), [c.window_queries(0, ROWS)[0, g].tolist() for g in range(2)]
    sets = {}
    for lam in (0.1, 0.07):
        z = reference_rkv_scores(K, Q, 4, lam=lam)
        want = set(sorted(range(56), key=lambda j: -z[j])[:20]) | set(range(56, 60))
        sets[lam] = set(RKVPress(budget=24, buffer=8, window=4, lam=lam).select(c, 0, ROWS)[0, 0].tolist())
        assert sets[lam] == want
    assert sets[0.1] != sets[0.07]


def _authors_bf16(K, Q, alpha, lam, kernel=7, tau=0.5):
    """The authors' update_kv scores for one row (K [H, n, D], Q [Hq, alpha, D]) in bf16, as their code
    orders the casts: bf16 logits, fp32 softmax, mean, back to bf16, bf16 max-pool and similarity."""
    H, n, D = K.shape
    K, Q = K.bfloat16(), Q.bfloat16()
    logits = (Q.view(H, -1, alpha, D) @ K[:, None].transpose(-1, -2) / math.sqrt(D)).amax(1)  # [H, alpha, n]
    a = F.softmax(logits[:, :, : n - alpha], -1, dtype=torch.float32).mean(-2).to(torch.bfloat16)
    imp = F.max_pool1d(a[:, None], kernel, 1, kernel // 2)[:, 0]
    kn = K / (K.norm(dim=-1, keepdim=True) + 1e-8)
    s = kn @ kn.transpose(-1, -2)
    for h in range(H):
        s[h].fill_diagonal_(0.0)
    last = torch.where(s > tau, torch.arange(n), 0).amax(-1)
    s[torch.arange(H)[:, None], torch.arange(n)[None], last] = 0
    red = s.mean(1).softmax(-1)[:, : n - alpha]
    return imp * lam - red * (1 - lam)


def test_bf16_scores_follow_the_authors_casts_and_change_the_selection():
    c = _filled_cache([200], 2, 4, 8, 4, torch.Generator().manual_seed(15))
    K, Q = c.k[0][0, :, :200], c.window_queries(0, ROWS)[0]
    from tessera.kv.presses.scorer import Candidates

    slot = torch.arange(200)[None]
    cand = Candidates(K[None], Q[None], c.pos[0][:, :, :200], torch.tensor([200]), slot < 200, slot < 196, None)
    got = PublishedRKVPress(budget=40, buffer=8, window=4).score(cand)[0, :, :196]
    assert got.dtype == torch.bfloat16
    want = _authors_bf16(K, Q, 4, 0.07)
    torch.testing.assert_close(got.float(), want.float(), atol=2e-5, rtol=1 / 64)  # within a bf16 ulp or so
    # bf16 rounding changes what is kept (ties and near-ties), fp32 is the finer ranking
    fp32 = RKVPress(budget=40, buffer=8, window=4, lam=0.07, order="score").select(c, 0, ROWS)
    bf16 = RKVPress(budget=40, buffer=8, window=4, lam=0.07, order="score", dtype="bf16").select(c, 0, ROWS)
    overlap = [len(set(a.tolist()) & set(b.tolist())) / 40 for a, b in zip(fp32[0], bf16[0])]
    assert min(overlap) > 0.8 and min(overlap) < 1.0


def test_bad_options_are_clear_errors():
    with pytest.raises(ValueError, match="order"):
        make_press("rkv", order="random")
    with pytest.raises(ValueError, match="dtype"):
        make_press("rkv", dtype="fp16")
    with pytest.raises(ValueError, match="impl"):
        make_press("rkv", impl="cuda")
    with pytest.raises(ValueError, match="threshold"):
        make_press("rkv", threshold=-0.5)
