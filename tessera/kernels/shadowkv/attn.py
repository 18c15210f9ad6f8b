"""Triton kernel: ShadowKV decode attention over the gathered buffer [local | outliers | selected | decoded].

Because selected keys are stored post-RoPE, the buffer is an ordinary dense KV list per KV head (order is
irrelevant), so the "sparse" attention is a dense GQA decode over a short buffer (arXiv 2410.21465 uses
flash_attn_with_kvcache for this). Split-K as in flash-decoding: the grid is (KV heads, key splits), each
program serves its head's G query heads with an online softmax over its split's key blocks and writes a
partial (max, sum, weighted values); torch merges the splits. A batch flattens to B x H KV heads; an
optional `valid` mask [H, T] skips the padding between one row's local window, its sparse slots and its
decoded tokens. The first version had one program per KV head (0.78 ms per step over ~2.5K keys with 8
KV heads on an H200: 8 busy SMs of 132).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _decode_kernel(q_ptr, k_ptr, v_ptr, valid_ptr, m_ptr, s_ptr, acc_ptr, T, SPLIT, NS, G, D, scale,
                   HAS_VALID: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    h, sp = tl.program_id(0), tl.program_id(1)
    g = tl.arange(0, BLOCK_G)
    d = tl.arange(0, BLOCK_D)
    qm = (g[:, None] < G) & (d[None, :] < D)
    q = tl.load(q_ptr + (h * G + g[:, None]) * D + d[None, :], mask=qm, other=0.0).to(tl.float32) * scale
    m = tl.full([BLOCK_G], float("-inf"), tl.float32)
    s = tl.zeros([BLOCK_G], tl.float32)
    acc = tl.zeros([BLOCK_G, BLOCK_D], tl.float32)
    for start in range(sp * SPLIT, tl.minimum(sp * SPLIT + SPLIT, T), BLOCK_N):  # SPLIT: a BLOCK_N multiple
        n = start + tl.arange(0, BLOCK_N)
        km = (n[:, None] < T) & (d[None, :] < D)
        k = tl.load(k_ptr + (h * T + n[:, None]) * D + d[None, :], mask=km, other=0.0).to(tl.float32)  # [BN, BD]
        v = tl.load(v_ptr + (h * T + n[:, None]) * D + d[None, :], mask=km, other=0.0).to(tl.float32)
        logit = tl.sum(q[:, None, :] * k[None, :, :], axis=2)  # [BG, BN]
        live = n < T
        if HAS_VALID:
            live = live & (tl.load(valid_ptr + h * T + n, mask=n < T, other=0) != 0)
        logit = tl.where(live[None, :], logit, float("-inf"))
        m_new = tl.maximum(m, tl.max(logit, axis=1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # a block of padding only: no -inf - -inf
        p = tl.exp(logit - m_safe[:, None])
        alpha = tl.exp(m - m_safe)
        s = s * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + tl.sum(p[:, :, None] * v[None, :, :], axis=1)
        m = m_new
    row = (h * NS + sp) * G + g  # this split's partial for each query head
    tl.store(m_ptr + row, m, mask=g < G)
    tl.store(s_ptr + row, s, mask=g < G)
    tl.store(acc_ptr + row[:, None] * D + d[None, :], acc, mask=qm)


def decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, valid: torch.Tensor | None = None,
                     block_n: int = 64, splits: int | None = None) -> torch.Tensor:
    """q [Hq, D] one token, k/v [H, T, D] (Hq a multiple of H), valid [H, T] bool or None (all) -> out [Hq, D];
    softmax scale 1/sqrt(D). Every head needs at least one valid key. `splits`: key splits per head
    (default: enough to give every SM two programs)."""
    Hq, D = q.shape
    H, T, D2 = k.shape
    if D2 != D or v.shape != k.shape or Hq % H or T < 1 or (valid is not None and valid.shape != (H, T)):
        raise ValueError(f"decode_attention: q [Hq, D], k/v [H, T, D] with H | Hq, T >= 1, valid [H, T]; got "
                         f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    G = Hq // H
    if splits is None:  # about two programs per SM, each at least one key block
        sms = torch.cuda.get_device_properties(q.device).multi_processor_count if q.is_cuda else 4
        splits = max(1, min(triton.cdiv(T, block_n), 2 * sms // H))
    split = triton.cdiv(triton.cdiv(T, splits), block_n) * block_n
    NS = triton.cdiv(T, split)
    m = torch.empty(H, NS, G, dtype=torch.float32, device=q.device)
    s = torch.empty_like(m)
    acc = torch.empty(H, NS, G, D, dtype=torch.float32, device=q.device)
    mask = valid.to(torch.int8).contiguous() if valid is not None else q  # q: an unused placeholder pointer
    _decode_kernel[(H, NS)](q.contiguous(), k.contiguous(), v.contiguous(), mask, m, s, acc, T, split, NS, G, D,
                            1.0 / D**0.5, HAS_VALID=valid is not None, BLOCK_G=triton.next_power_of_2(G),
                            BLOCK_N=block_n, BLOCK_D=triton.next_power_of_2(D))
    m_all = m.amax(1, keepdim=True)  # [H, 1, G]; finite: every head has a valid key
    w = torch.exp(m - m_all)  # [H, NS, G]; 0 for a split of padding only (m = -inf)
    out = (w[..., None] * acc).sum(1) / (w * s).sum(1)[..., None]  # [H, G, D]
    return out.reshape(Hq, D).to(q.dtype)
