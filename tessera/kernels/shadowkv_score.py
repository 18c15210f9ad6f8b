"""Triton kernel: ShadowKV landmark scoring (arXiv 2410.21465, the authors' fused `batch_gemm_softmax`).

For one KV head h with G query heads: p[g, n] = softmax_n(q[h, g] . landmark[h, n] / sqrt(D)), and the
score of chunk n is max_g p[g, n] (GQA max-pooling). Only the first n_valid[h] landmarks of a head are
real (a batch pads its rows to the longest); padding scores -1, below every probability. One program per
KV head (a batch flattens to B x H heads); two passes over the
landmarks (online max/sum, then normalised probabilities pooled over the group), so no [G, n] logits
tensor is written to memory. Top-k stays in torch (`torch.topk`).

Checked against `landmark_scores_ref` under TRITON_INTERPRET=1 only; not yet timed on a GPU.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _score_kernel(q_ptr, lm_ptr, nv_ptr, out_ptr, n, G, D, scale,
                  BLOCK_G: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    h = tl.program_id(0)
    nv = tl.load(nv_ptr + h)  # real landmarks of this head
    g = tl.arange(0, BLOCK_G)
    d = tl.arange(0, BLOCK_D)
    q = tl.load(q_ptr + (h * G + g[:, None]) * D + d[None, :], mask=(g[:, None] < G) & (d[None, :] < D), other=0.0)
    q = q.to(tl.float32) * scale  # [BG, BD]
    m = tl.full([BLOCK_G], float("-inf"), tl.float32)
    s = tl.zeros([BLOCK_G], tl.float32)
    for start in range(0, n, BLOCK_N):  # pass 1: running max and normaliser per query head
        c = start + tl.arange(0, BLOCK_N)
        lm = tl.load(lm_ptr + (h * n + c[:, None]) * D + d[None, :], mask=(c[:, None] < n) & (d[None, :] < D),
                     other=0.0).to(tl.float32)  # [BN, BD]
        logit = tl.sum(q[:, None, :] * lm[None, :, :], axis=2)  # [BG, BN]
        logit = tl.where(c[None, :] < nv, logit, float("-inf"))
        m_new = tl.maximum(m, tl.max(logit, axis=1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # no -inf - -inf while only padding was seen
        s = s * tl.exp(m - m_safe) + tl.sum(tl.exp(logit - m_safe[:, None]), axis=1)
        m = m_new
    for start in range(0, n, BLOCK_N):  # pass 2: probabilities, max over the group
        c = start + tl.arange(0, BLOCK_N)
        lm = tl.load(lm_ptr + (h * n + c[:, None]) * D + d[None, :], mask=(c[:, None] < n) & (d[None, :] < D),
                     other=0.0).to(tl.float32)
        logit = tl.sum(q[:, None, :] * lm[None, :, :], axis=2)
        p = tl.exp(logit - m[:, None]) / s[:, None]
        p = tl.where(g[:, None] < G, p, 0.0)
        tl.store(out_ptr + h * n + c, tl.where(c < nv, tl.max(p, axis=0), -1.0), mask=c < n)


def landmark_scores_ref(q: torch.Tensor, landmarks: torch.Tensor, n_valid: torch.Tensor | None = None
                        ) -> torch.Tensor:
    """q [H, G, D], landmarks [H, n, D], n_valid [H] (default: all real) -> pooled scores [H, n] fp32,
    -1 at padding (the torch path of the backend)."""
    D, n = q.shape[-1], landmarks.shape[1]
    logits = torch.einsum("hgd,hnd->hgn", q.float(), landmarks.float()) / D**0.5
    if n_valid is None:
        return torch.softmax(logits, -1).amax(1)
    real = torch.arange(n, device=q.device)[None] < n_valid[:, None]  # [H, n]
    pooled = torch.softmax(logits.masked_fill(~real[:, None], float("-inf")), -1).amax(1)
    return torch.where(real, pooled, -1.0)  # a head with no real landmark gave NaN: padding only


def landmark_scores(q: torch.Tensor, landmarks: torch.Tensor, n_valid: torch.Tensor | None = None,
                    block_n: int = 64) -> torch.Tensor:
    """Triton version of `landmark_scores_ref`; same shapes and semantics."""
    if q.dim() != 3 or landmarks.dim() != 3 or q.shape[0] != landmarks.shape[0] or q.shape[2] != landmarks.shape[2]:
        raise ValueError(f"landmark_scores: q [H, G, D] and landmarks [H, n, D], got {tuple(q.shape)}, "
                         f"{tuple(landmarks.shape)}")
    if q.device != landmarks.device:
        raise ValueError("landmark_scores: q and landmarks must be on the same device")
    q, landmarks = q.contiguous(), landmarks.contiguous()
    H, G, D = q.shape
    n = landmarks.shape[1]
    out = torch.empty(H, n, dtype=torch.float32, device=q.device)
    nv = torch.full((H,), n, dtype=torch.int32, device=q.device) if n_valid is None else n_valid.to(torch.int32)
    _score_kernel[(H,)](q, landmarks, nv.contiguous(), out, n, G, D, 1.0 / D**0.5, BLOCK_G=triton.next_power_of_2(G),
                        BLOCK_N=block_n, BLOCK_D=triton.next_power_of_2(D))
    return out
