"""ShadowKV backend: exactness at full budget and rank, selection vs an independent transcription,
batches with different prompt lengths, MHA, short-prompt fallback, errors, fast-tier memory."""

import pytest
import torch
import torch.nn.functional as F
from kv_helpers import random_prompts, run_steps, tiny_model

from tessera.config import SamplingParams
from tessera.engine.engine import LLM
from tessera.kv import make_cache
from tessera.kv.cache import DenseCache, StepContext
from tessera.kv.presses import NoPress
from tessera.kv.shadowkv import ShadowKVOptions
from tessera.kv.shadowkv.lowrank import factorize, rebuild
from tessera.kv.shadowkv.selection import assign_slots, landmarks_and_outliers, select_chunks
from tessera.layers.rope import RotaryEmbedding, apply_rope


def _caches(model, batch, **opts):
    cfg = model.config
    dense = DenseCache(cfg.num_hidden_layers, batch, cfg.num_key_value_heads, cfg.head_dim, torch.float32, "cpu")
    return dense, make_cache("shadowkv", cfg, batch, torch.float32, "cpu", NoPress(), **opts)


@pytest.mark.parametrize("heads,kv_heads,head_dim", [(4, 2, 16), (4, 4, 24)])  # GQA; MHA with odd head dim
def test_full_budget_and_rank_equals_dense_for_a_ragged_batch(heads, kv_heads, head_dim):
    model = tiny_model(heads, kv_heads, head_dim)
    prompts = random_prompts([150, 97])  # 14 and 8 context chunks outside the local window
    dense, skv = _caches(model, 2, rank=kv_heads * head_dim, sparse_budget=256, outlier_chunks=3)
    steps = 5
    ref, got = run_steps(model, dense, prompts, steps), run_steps(model, skv, prompts, steps)
    torch.testing.assert_close(got, ref, atol=2e-4, rtol=2e-4)
    s = skv.layers[0]  # both rows padded into one batch state
    assert s.sparse and s.n_landmarks.tolist() == [14 - 3] * kv_heads + [8 - 3] * kv_heads
    local = 150 - 14 * 8 + 3 * 8
    assert s.local_k.shape[2] == local and s.static_valid[1, :local].sum() == 97 - 8 * 8 + 3 * 8
    # every chunk is selected every step: step 1 misses all, the next steps hit all
    assert skv.hit_rate() == pytest.approx((steps - 1) / steps)
    # each non-outlier chunk's values crossed tiers exactly once (outliers live on the fast tier)
    once = sum(int(st.n_landmarks.sum()) * 8 * head_dim * 4 for st in skv.layers)
    assert skv.bytes_transferred() == once < skv.host_nbytes()


def test_small_budget_attends_exactly_the_selected_chunks():
    """With full rank, a sparse step equals dense attention restricted to the chunks chosen by an
    independent transcription of the scoring rule (plus local window, outliers and decoded tokens)."""
    model = tiny_model()
    dense, skv = _caches(model, 1, rank=32, sparse_budget=16, outlier_chunks=2)
    prompts = random_prompts([200])
    run_steps(model, dense, prompts, steps=0)
    run_steps(model, skv, prompts, steps=0)
    s = skv.layers[0]
    torch.manual_seed(3)
    q, k, v = torch.randn(1, 4, 1, 16), torch.randn(1, 2, 1, 16), torch.randn(1, 2, 1, 16)
    ctx = StepContext(torch.tensor([[200]]), torch.tensor([1]), False)
    with torch.inference_mode():
        out = skv.attend(0, q, k, v, ctx)
    kd, vd = dense.k[0][0, :, :200], dense.v[0][0, :, :200]  # [H, 200, D] post-RoPE originals
    n_ctx = 21 * 8
    for h in range(2):
        ids = s.landmark_ids[0, h].tolist()
        lm = torch.stack([kd[h, c * 8:(c + 1) * 8].mean(0) for c in ids])  # [n, D]
        score = torch.stack([torch.softmax(q[0, g, 0] @ lm.T / 4.0, -1) for g in (2 * h, 2 * h + 1)]).amax(0)
        chosen = [ids[i] for i in score.topk(2).indices.tolist()]
        outl = sorted(set(range(21)) - set(ids))
        toks = [t for c in sorted(chosen + outl) for t in range(c * 8, c * 8 + 8)] + list(range(n_ctx, 200))
        kk = torch.cat([kd[h, toks], k[0, h]], 0)
        vv = torch.cat([vd[h, toks], v[0, h]], 0)
        for g in (2 * h, 2 * h + 1):
            ref = torch.softmax(q[0, g, 0] @ kk.T / 4.0, -1) @ vv
            torch.testing.assert_close(out[0, g, 0], ref, atol=1e-4, rtol=1e-4)


def test_a_padded_batch_decodes_each_row_as_if_alone():
    """Rows of different lengths (one too short for the scheme) at a small budget: the batched step with
    its padding and disabled slots gives every row the logits it gets in a batch of one."""
    model = tiny_model()
    prompts = random_prompts([200, 30, 121])
    opts = dict(rank=12, sparse_budget=16, outlier_chunks=2)
    _, skv = _caches(model, 3, **opts)
    tokens = torch.randint(0, 97, (4, 3), generator=torch.Generator().manual_seed(7))
    got = run_steps(model, skv, prompts, steps=4, tokens=tokens)  # [5, 3, V]
    for b, p in enumerate(prompts):
        _, alone = _caches(model, 1, **opts)
        ref = run_steps(model, alone, [p], steps=4, tokens=tokens[:, b:b + 1])[:, 0]
        torch.testing.assert_close(got[:, b], ref, atol=2e-4, rtol=2e-4)
    assert skv.layers[0].slot_ids[1].eq(-2).all()  # the dense row has no slot to fill
    assert 0 < skv.hit_rate() < 1


def test_full_rank_rebuild_reproduces_post_rope_keys():
    torch.manual_seed(4)
    H, T, D = 3, 40, 8
    k_pre = torch.randn(H, T, D)
    u, sv = factorize(k_pre, H * D, torch.float32)
    assert u.shape == (T, H * D) and sv.shape == (H, H * D, D)
    rope = RotaryEmbedding(D, 500.0)
    heads, chunks = torch.tensor([0, 2, 1]), torch.tensor([4, 0, 2])
    got = rebuild(u, sv, heads, chunks, 8, 7, rope)  # context starts at position 7
    cos, sin = rope.cos_sin(torch.arange(7, 7 + T)[None], torch.float32)
    post = apply_rope(k_pre[None], cos, sin)[0]  # [H, T, D]
    for i, (h, c) in enumerate(zip(heads.tolist(), chunks.tolist())):
        torch.testing.assert_close(got[i], post[h, c * 8:(c + 1) * 8], atol=1e-4, rtol=1e-4)
    # low rank is capped by the sequence length and is an approximation, not a copy
    u2, _ = factorize(k_pre[:, :5], 100, torch.float32)
    assert u2.shape == (5, 5)


def test_landmarks_outliers_and_selection_vs_loops():
    torch.manual_seed(5)
    H, n, C, D, G = 2, 12, 4, 8, 3
    k = torch.randn(H, n * C, D)
    k[1, 9 * C:10 * C] = k[1, 9 * C]
    k[1, 10 * C - 1] *= -1  # chunk 9 of head 1 is [x, x, x, -x]: cosine -1 to its mean, the worst possible
    lm, ids, out = landmarks_and_outliers(k, C, 2)
    for h in range(H):
        mins = []
        for c in range(n):
            blk = k[h, c * C:(c + 1) * C]
            m = blk.mean(0)
            mins.append(min(float(F.cosine_similarity(x, m, dim=0)) for x in blk))
        expect_out = sorted(sorted(range(n), key=lambda c: mins[c])[:2])
        assert out[h].tolist() == expect_out
        assert ids[h].tolist() == [c for c in range(n) if c not in expect_out]
        for j, c in enumerate(ids[h].tolist()):
            torch.testing.assert_close(lm[h, j], k[h, c * C:(c + 1) * C].mean(0))
    assert 9 in out[1].tolist()
    q = torch.randn(H * G, D)
    n_valid = torch.tensor([lm.shape[1], 4])  # head 1 as a padded batch row with 4 real landmarks
    top = select_chunks(q.view(H, G, D), lm, ids, n_valid, 3)
    for h in range(H):
        n = int(n_valid[h])
        best = [max(torch.softmax(q[h * G + g] @ lm[h, :n].T / D**0.5, -1)[j].item() for g in range(G))
                for j in range(n)]
        expect = {ids[h, j].item() for j in sorted(range(n), key=lambda j: -best[j])[:3]}
        assert set(top[h].tolist()) == expect


def test_bounds_landmarks_score_the_upper_bound_of_each_chunk():
    torch.manual_seed(6)
    H, n, C, D, G = 2, 10, 4, 8, 2
    k = torch.randn(H, n * C, D)
    lm, ids, _ = landmarks_and_outliers(k, C, 2, "bounds")
    assert lm.shape == (H, n - 2, 2 * D)
    chunks = k.view(H, n, C, D)
    for h in range(H):
        for j, c in enumerate(ids[h].tolist()):
            torch.testing.assert_close(lm[h, j], torch.cat([chunks[h, c].amin(0), chunks[h, c].amax(0)]))
    # with one token per chunk the bound is exact: selection is the exact top-k of q . k
    lm1, ids1, _ = landmarks_and_outliers(k, 1, 0, "bounds")
    q = torch.randn(H, 1, D)
    top = select_chunks(q, lm1, ids1, torch.tensor([n * C] * H), 5)
    for h in range(H):
        assert set(top[h].tolist()) == set((k[h] @ q[h, 0]).topk(5).indices.tolist())
    # and it is an upper bound: each chunk's logit is >= every one of its keys' q . k
    qg = torch.randn(H, G, D)
    bound = (qg.clamp(min=0) @ lm[..., D:].transpose(1, 2) + qg.clamp(max=0) @ lm[..., :D].transpose(1, 2))
    exact = torch.stack([(chunks[h, ids[h]] @ qg[h].T).amax(1).T for h in range(H)])  # [H, G, n - 2]
    assert (bound >= exact - 1e-5).all()
    with pytest.raises(ValueError, match="width"):
        select_chunks(qg, lm[..., :5], ids, torch.tensor([n - 2] * H), 2)


def test_bounds_find_a_one_token_match_that_the_mean_dilutes():
    """The needle: one key of chunk 3 matches q; its chunk mates point away, so the chunk mean is ~0 and
    a chunk of mildly matching keys wins on the mean. The bound sees the single match."""
    D, C = 16, 8
    q = torch.zeros(1, 1, D)
    q[0, 0, 0] = 1.0
    k = torch.randn(1, 6 * C, D) * 0.05
    k[0, :, 0] = -0.2  # every key mildly against q ...
    k[0, 1 * C:2 * C, 0] = 0.5  # ... except chunk 1, mildly for it
    k[0, 3 * C, 0] = 4.0  # the needle, and its mates strongly against: chunk 3's mean is ~0
    k[0, 3 * C + 1:4 * C, 0] = -0.6
    picks = {}
    for kind in ("mean", "bounds"):
        lm, ids, _ = landmarks_and_outliers(k, C, 0, kind)
        picks[kind] = select_chunks(q, lm, ids, torch.tensor([6]), 1)[0, 0].item()
    assert picks == {"mean": 1, "bounds": 3}


def test_slot_reuse_keeps_hits_in_place():
    slots = torch.tensor([[5, 1, 9, 3], [-1, -1, -1, -1]])
    wanted = torch.tensor([[9, 7, 5, 2], [4, 6, 8, 0]])
    heads, where, chunks, hits = assign_slots(slots, wanted)
    assert hits == 2
    new = slots.clone()
    new[heads, where] = chunks
    assert new[0, 0] == 5 and new[0, 2] == 9  # hits did not move
    for h in range(2):
        assert sorted(new[h].tolist()) == sorted(wanted[h].tolist())
    assert heads.tolist().count(1) == 4  # an empty head misses everything


def test_short_prompt_falls_back_to_dense():
    model = tiny_model()
    prompts = random_prompts([20, 39])  # < (local_chunks + 1) * chunk_size = 40 tokens
    dense, skv = _caches(model, 2, sparse_budget=64)
    torch.testing.assert_close(run_steps(model, skv, prompts), run_steps(model, dense, prompts))
    assert not skv.layers[1].sparse and skv.host_nbytes() == 0 and skv.hit_rate() == 0.0


def test_engine_generate_ragged_batch_and_select():
    model = tiny_model()
    llm = LLM(model)
    prompts = random_prompts([120, 60, 90])
    sp = SamplingParams(max_new_tokens=6, temperature=0.0, ignore_eos=True)
    ref = llm.generate(prompts, sp)
    for landmark in ("mean", "bounds"):
        got = llm.generate(prompts, sp, kv="shadowkv", kv_options={"rank": 32, "sparse_budget": 128,
                                                                   "landmark": landmark})
        assert [c.token_ids for c in got.completions] == [c.token_ids for c in ref.completions]


def test_errors():
    cfg = tiny_model().config
    mk = lambda **o: make_cache("shadowkv", cfg, 1, torch.float32, "cpu", NoPress(), **o)  # noqa: E731
    with pytest.raises(ValueError, match="exceeds the key width"):
        mk(rank=33)  # Hkv*D = 32
    with pytest.raises(ValueError, match="multiple of chunk_size"):
        mk(sparse_budget=100)
    with pytest.raises(ValueError, match="unknown shadowkv options"):
        mk(budget=64)
    with pytest.raises(ValueError, match=">= 1"):
        ShadowKVOptions(rank=0)
    with pytest.raises(ValueError, match="landmark must be one of"):
        mk(landmark="max")
    from tessera.kv.presses import make_press
    with pytest.raises(ValueError, match="does not compose"):
        make_cache("shadowkv", cfg, 1, torch.float32, "cpu", make_press("streamingllm", budget=64))
    assert mk().rank == 32  # default 160 is capped by the key width


def test_fast_tier_is_much_smaller_than_dense():
    model = tiny_model(head_dim=64, layers=1)  # key width 128
    prompts = random_prompts([800])
    dense, skv = _caches(model, 1, rank=16, sparse_budget=64, outlier_chunks=4)
    run_steps(model, dense, prompts, steps=2)
    run_steps(model, skv, prompts, steps=2)
    fast, host = skv.nbytes(), skv.host_nbytes()
    dense_bytes = dense.nbytes()
    assert fast < 0.3 * dense_bytes, (fast, dense_bytes)
    assert host == 2 * (800 // 8 - 4) * 8 * 64 * 4  # every context value, and only those, on the host
    assert 0 < skv.bytes_transferred() <= 2 * 2 * 64 * 64 * 4  # <= 2 steps x budget x heads


@torch.inference_mode()
def test_select_drops_rows_and_keeps_the_rest_exact():
    model = tiny_model()
    prompts = random_prompts([130, 70, 100])
    dense, skv = _caches(model, 3, rank=32, sparse_budget=256, outlier_chunks=2)
    run_steps(model, dense, prompts, steps=1)
    run_steps(model, skv, prompts, steps=1)
    moved = skv.bytes_transferred()
    rows = torch.tensor([2, 0])
    dense.select(rows)
    skv.select(rows)
    assert skv.layers[0].local_k.shape[0] == 2 and skv.bytes_transferred() == moved  # departed rows still counted
    seq = torch.tensor([101, 131])
    tok = torch.tensor([[5], [7]])
    ctx = StepContext(seq[:, None], torch.ones(2, dtype=torch.long), False)
    torch.testing.assert_close(model(tok, seq[:, None], skv, ctx), model(tok, seq[:, None], dense, ctx),
                               atol=2e-4, rtol=2e-4)
