"""DenseCache: append/attend semantics, logical positions, keep() frees memory for real."""

import torch
import torch.nn.functional as F

from tessera.kv.cache import DenseCache, StepContext


def _ctx(pos, new_lens, prefill):
    return StepContext(positions=pos, new_lens=new_lens, is_prefill=prefill)


def test_prefill_then_decode_matches_plain_attention():
    torch.manual_seed(0)
    B, Hq, H, D = 2, 4, 2, 8
    lens = torch.tensor([5, 3])
    c = DenseCache(1, B, H, D, torch.float32, "cpu", growth=4)
    c.request_queries(2)
    q, k, v = torch.randn(B, Hq, 5, D), torch.randn(B, H, 5, D), torch.randn(B, H, 5, D)
    out = c.attend(0, q, k, v, _ctx(torch.arange(5).expand(B, 5), lens, True))
    for b in range(B):
        n = int(lens[b])
        ref = F.scaled_dot_product_attention(q[b:b + 1, :, :n], k[b:b + 1, :, :n], v[b:b + 1, :, :n],
                                             is_causal=True, enable_gqa=True)
        torch.testing.assert_close(out[b:b + 1, :, :n], ref)
    # decode one token per row at its own logical position
    q1, k1, v1 = torch.randn(B, Hq, 1, D), torch.randn(B, H, 1, D), torch.randn(B, H, 1, D)
    out1 = c.attend(0, q1, k1, v1, _ctx(lens[:, None], torch.ones(2, dtype=torch.long), False))
    for b in range(B):
        n = int(lens[b])
        kk = torch.cat([k[b:b + 1, :, :n], k1[b:b + 1]], 2)
        vv = torch.cat([v[b:b + 1, :, :n], v1[b:b + 1]], 2)
        ref = F.scaled_dot_product_attention(q1[b:b + 1], kk, vv, enable_gqa=True)
        torch.testing.assert_close(out1[b:b + 1], ref)
    assert c.lens[0].tolist() == [6, 4]
    assert c.pos[0][1, 0, :4].tolist() == [0, 1, 2, 3]
    # query ring: last 2 real queries of each row, the newest last
    ring = c.window_queries(0, torch.tensor([1]))[0]  # [Hq, 2, D]
    torch.testing.assert_close(ring[:, 0], q[1, :, 2])
    torch.testing.assert_close(ring[:, 1], q1[1, :, 0])


def test_keep_gathers_per_head_and_shrinks():
    torch.manual_seed(1)
    B, H, D, T = 2, 2, 4, 10
    c = DenseCache(1, B, H, D, torch.float32, "cpu", growth=64)
    k, v = torch.randn(B, H, T, D), torch.randn(B, H, T, D)
    c.attend(0, torch.randn(B, H, T, D), k, v, _ctx(torch.arange(T).expand(B, T), torch.tensor([T, T]), True))
    before = c.nbytes()
    idx = torch.tensor([[[0, 3, 9], [1, 2, 8]]])  # row 1 only, a different token set per head
    c.keep(0, torch.tensor([1]), idx)
    assert c.lens[0].tolist() == [10, 3]
    torch.testing.assert_close(c.k[0][1, 1, :3], k[1, 1, [1, 2, 8]])
    assert c.pos[0][1, 0, :3].tolist() == [0, 3, 9]  # logical positions travel with the tokens
    c.keep(0, torch.tensor([0]), idx)
    c.shrink()
    assert c.capacity() == 3 and c.nbytes() < before / 10
