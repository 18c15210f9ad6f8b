"""ShadowKV Triton kernels vs their torch references (TRITON_INTERPRET=1 on CPU, via conftest)."""

import pytest
import torch

from tessera.kernels.shadowkv.score import landmark_scores, landmark_scores_ref


@pytest.mark.parametrize("H,G,n,D", [(2, 4, 37, 16), (3, 1, 70, 24), (1, 3, 5, 8)])  # GQA, MHA + odd D, n < block
def test_landmark_scores_match_reference(H, G, n, D):
    torch.manual_seed(H * 100 + n)
    q, lm = torch.randn(H, G, D) * 2, torch.randn(H, n, D)
    got = landmark_scores(q, lm, block_n=16)
    ref = landmark_scores_ref(q, lm)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-4)
    assert torch.equal(got.topk(min(3, n)).indices.sort().values, ref.topk(min(3, n)).indices.sort().values)
    # a padded batch: head 0 has no real landmark (dense row), the last head a short prefix
    n_valid = torch.full((H,), n)
    n_valid[-1] = min(n, 3)
    if H > 1:
        n_valid[0] = 0
    got, ref = landmark_scores(q, lm, n_valid, block_n=16), landmark_scores_ref(q, lm, n_valid)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-4)
    assert (got[-1, :n_valid[-1]] >= 0).all() and (got[-1, n_valid[-1]:] == -1).all()
    assert H == 1 or (got[0] == -1).all()


def test_landmark_scores_take_a_scale():
    """Bounds landmarks score [q-, q+] (width 2D) at the scale 1/sqrt(D) of the original queries."""
    torch.manual_seed(8)
    q, lm = torch.randn(2, 3, 32) * 2, torch.randn(2, 20, 32)
    ref = landmark_scores_ref(q, lm, scale=16**-0.5)
    torch.testing.assert_close(landmark_scores(q, lm, scale=16**-0.5, block_n=16), ref, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(ref, landmark_scores_ref(q, lm))  # the scale changes the pooled softmax


def test_landmark_scores_rejects_bad_shapes():
    with pytest.raises(ValueError, match="landmark_scores"):
        landmark_scores(torch.randn(2, 4, 16), torch.randn(3, 10, 16))


@pytest.mark.parametrize("H,T,r,D,C", [(2, 48, 20, 16, 8), (3, 40, 7, 24, 4)])  # rank not a block multiple, odd D/2
def test_rebuild_keys_match_torch_path(H, T, r, D, C):
    from tessera.kernels.shadowkv.rebuild import rebuild_keys
    from tessera.kv.shadowkv.lowrank import rebuild
    from tessera.layers.rope import RotaryEmbedding

    torch.manual_seed(r)
    u, sv = torch.randn(T, r), torch.randn(H, r, D)
    rope = RotaryEmbedding(D, 10000.0)
    heads = torch.tensor([0, H - 1, 1, 0])
    chunks = torch.tensor([0, T // C - 1, 2, 3])
    got = rebuild_keys(u, sv, heads, chunks, C, 11, rope.inv_freq, block_r=8)
    ref = rebuild(u, sv, heads, chunks, C, 11, rope)
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)
    pos0 = torch.tensor([11, -5, 30, 0])  # per chunk, as a flattened batch passes it
    got = rebuild_keys(u, sv, heads, chunks, C, pos0, rope.inv_freq, block_r=8)
    torch.testing.assert_close(got, rebuild(u, sv, heads, chunks, C, pos0, rope), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got[0], ref[0], atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="rebuild_keys"):
        rebuild_keys(u, sv[:, :, :-1], heads, chunks, C, 0, rope.inv_freq)


@pytest.mark.parametrize("splits", [1, 3])  # split-K: one program per head, or three merged partials
@pytest.mark.parametrize("Hq,H,T,D", [(4, 2, 70, 16), (3, 3, 9, 24)])  # GQA over several blocks; MHA, odd D
def test_decode_attention_matches_sdpa(Hq, H, T, D, splits):
    import torch.nn.functional as F

    from tessera.kernels.shadowkv.attn import decode_attention

    torch.manual_seed(T)
    q, k, v = torch.randn(Hq, D), torch.randn(H, T, D), torch.randn(H, T, D)
    got = decode_attention(q, k, v, block_n=16, splits=splits)
    ref = F.scaled_dot_product_attention(q[None, :, None], k[None], v[None], enable_gqa=Hq != H)[0, :, 0]
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-4)
    valid = torch.rand(H, T) < 0.6
    valid[:, :min(T, 16)] = False  # the first key block is all padding
    valid[:, -1] = True
    got = decode_attention(q, k, v, valid, block_n=16, splits=splits)
    per_q = valid.repeat_interleave(Hq // H, 0)  # [Hq, T]: each query head sees its KV head's mask
    ref = F.scaled_dot_product_attention(q[None, :, None], k[None], v[None], attn_mask=per_q[None, :, None],
                                         enable_gqa=Hq != H)[0, :, 0]
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="decode_attention"):
        decode_attention(torch.randn(5, D), k, v)


def test_decode_attention_flattens_a_padded_batch():
    """The cache's CUDA path: B x H KV heads in one launch, each row's padding masked."""
    import torch.nn.functional as F

    from tessera.kernels.shadowkv.attn import decode_attention

    torch.manual_seed(0)
    B, Hq, H, T, D = 3, 4, 2, 40, 16
    q, k, v = torch.randn(B, Hq, D), torch.randn(B, H, T, D), torch.randn(B, H, T, D)
    valid = torch.rand(B, T) < 0.7
    valid[:, -1] = True
    got = decode_attention(q.reshape(B * Hq, D), k.reshape(B * H, T, D), v.reshape(B * H, T, D),
                           valid[:, None].expand(B, H, T).reshape(B * H, T), block_n=16).view(B, Hq, D)
    ref = F.scaled_dot_product_attention(q[:, :, None], k, v, attn_mask=valid[:, None, None], enable_gqa=True)[:, :, 0]
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-4)
