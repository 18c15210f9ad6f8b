"""Triton kernel: R-KV's per-row redundancy statistics, fused (arXiv 2505.24133; the authors' SGLang port
ships a fused Triton redundancy kernel too, github.com/Zefan-Cai/R-KV `SGLang/`, not read for this one).

One program takes BLOCK_I rows i of one (batch row, KV head) and streams the keys j in blocks of BLOCK_J:
S_ij = k_i . k_j on unit keys (tl.dot, fp32 accumulation), the diagonal dropped, then it keeps a running
row sum and the largest j with S_ij > threshold together with that S_ij. Nothing of size n x n is written:
the output is three numbers per row (`reference.row_stats_ref`), turned into the redundancy score by
`reference.redundancy_from_row_stats` in torch. Padding keys are zero (unit keys times the valid mask), so
with a threshold >= 0 they neither add to a sum nor match; rows past a sequence's length write zeros.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from tessera.kernels.rkv.reference import normalized_keys


@triton.jit
def _row_stats_kernel(k_ptr, n_ptr, sum_ptr, last_ptr, val_ptr, N, H, D, threshold,
                      BLOCK_I: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_D: tl.constexpr, IEEE: tl.constexpr):
    p, bi = tl.program_id(0), tl.program_id(1)  # p = batch row * H + KV head
    n = tl.load(n_ptr + p // H)  # tokens this row holds
    i = bi * BLOCK_I + tl.arange(0, BLOCK_I)
    d = tl.arange(0, BLOCK_D)
    base = k_ptr + p.to(tl.int64) * N * D
    ki = tl.load(base + i[:, None] * D + d[None, :], mask=(i[:, None] < n) & (d[None, :] < D), other=0.0)
    rowsum = tl.zeros([BLOCK_I], dtype=tl.float32)
    val0 = tl.zeros([BLOCK_I], dtype=tl.float32)  # S_i0: what a row without a match exempts
    last = tl.full([BLOCK_I], -1, dtype=tl.int32)
    lastval = tl.zeros([BLOCK_I], dtype=tl.float32)
    for j0 in range(0, n, BLOCK_J):
        j = j0 + tl.arange(0, BLOCK_J)
        kj = tl.load(base + j[:, None] * D + d[None, :], mask=(j[:, None] < n) & (d[None, :] < D), other=0.0)
        if IEEE:  # fp32 keys: no TF32 rounding, a similarity near the threshold must fall as in torch
            s = tl.dot(ki, tl.trans(kj), input_precision="ieee")  # [BI, BJ]
        else:
            s = tl.dot(ki, tl.trans(kj))
        s = tl.where(i[:, None] == j[None, :], 0.0, s)
        rowsum += tl.sum(s, axis=1)
        val0 += tl.sum(tl.where(j[None, :] == 0, s, 0.0), axis=1)
        cand = tl.where((s > threshold) & (j[None, :] < n), j[None, :], -1)
        bmax = tl.max(cand, axis=1)  # the most recent match in this block, -1 if none
        bval = tl.max(tl.where(j[None, :] == bmax[:, None], s, float("-inf")), axis=1)
        found = bmax >= 0  # blocks go oldest first: a later block's match wins
        last = tl.where(found, bmax, last)
        lastval = tl.where(found, bval, lastval)
    has = last >= 0
    out = i < N
    tl.store(sum_ptr + p * N + i, rowsum, mask=out)
    tl.store(last_ptr + p * N + i, tl.where(has, last, 0), mask=out)
    tl.store(val_ptr + p * N + i, tl.where(has, lastval, val0), mask=out)


def row_stats_triton(keys: torch.Tensor, valid: torch.Tensor, threshold: float = 0.5,
                     block_i: int = 32, block_j: int = 32):
    """Triton version of `reference.row_stats_ref`: keys [R, H, N, D], valid [R, N] (a prefix of each row)
    -> (row sums fp32, r(i) int64, S_{i, r(i)} fp32), each [R, H, N]."""
    if keys.dim() != 4 or valid.shape != (keys.shape[0], keys.shape[2]):
        raise ValueError(f"row_stats_triton: keys [R, H, N, D] and valid [R, N], got {tuple(keys.shape)}, "
                         f"{tuple(valid.shape)}")
    if not 0.0 <= threshold < 1.0:
        raise ValueError(f"row_stats_triton: threshold must be in [0, 1) (padding keys are zero), got {threshold}")
    R, H, N, D = keys.shape
    lens = valid.sum(-1)
    if not torch.equal(valid, torch.arange(N, device=valid.device)[None] < lens[:, None]):
        raise ValueError("row_stats_triton: valid must mark a prefix of every row (slots [0, len))")
    k = normalized_keys(keys, valid).contiguous()  # [R, H, N, D] fp32
    rowsum = torch.empty(R, H, N, device=keys.device)
    last = torch.empty(R, H, N, dtype=torch.int32, device=keys.device)
    lastval = torch.empty(R, H, N, device=keys.device)
    BLOCK_D = max(16, triton.next_power_of_2(D))
    _row_stats_kernel[(R * H, triton.cdiv(N, block_i))](
        k, lens.to(torch.int32).contiguous(), rowsum, last, lastval, N, H, D, float(threshold),
        BLOCK_I=block_i, BLOCK_J=block_j, BLOCK_D=BLOCK_D, IEEE=True)
    return rowsum, last.long(), lastval
