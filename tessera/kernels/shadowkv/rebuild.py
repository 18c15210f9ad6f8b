"""Triton kernel: ShadowKV key rebuild = gather U rows of a chunk, multiply by SV[h], apply RoPE at the
original positions (arXiv 2410.21465; upstream does this as a CUTLASS gather-GEMM plus a separate RoPE
kernel because its RoPE epilogue is unfinished; here it is one pass).

out[m, t] = rope(U[chunk[m]*C + t] @ SV[head[m]], pos0[m] + chunk[m]*C + t), half-split (HF) RoPE. A batch
passes U flattened over its rows ([B*T, r]), SV over rows x heads, and a per-miss pos0 that makes the
flattened row index land on the row's own positions.
One program per (chunk, head) pair; the rank is reduced in blocks with broadcast-multiply-sum, so any
chunk size and head dim work (tl.dot would need tiles of 16). Checked against the torch path
(`tessera.kv.shadowkv.lowrank.rebuild`) under TRITON_INTERPRET=1 only; not yet timed on a GPU.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _rebuild_kernel(u_ptr, sv_ptr, head_ptr, chunk_ptr, pos_ptr, inv_ptr, out_ptr, R, C, HALF,
                    BLOCK_C: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_H: tl.constexpr):
    m = tl.program_id(0)
    h = tl.load(head_ptr + m)
    c = tl.load(chunk_ptr + m)
    pos0 = tl.load(pos_ptr + m)
    t = tl.arange(0, BLOCK_C)
    j = tl.arange(0, BLOCK_H)
    row = c * C + t  # [BC] context rows of this chunk
    D = 2 * HALF
    x1 = tl.zeros([BLOCK_C, BLOCK_H], tl.float32)  # first half of the pre-RoPE key
    x2 = tl.zeros([BLOCK_C, BLOCK_H], tl.float32)
    for r0 in range(0, R, BLOCK_R):
        r = r0 + tl.arange(0, BLOCK_R)
        u = tl.load(u_ptr + row[:, None] * R + r[None, :], mask=(t[:, None] < C) & (r[None, :] < R),
                    other=0.0).to(tl.float32)  # [BC, BR]
        base = sv_ptr + h * R * D + r[:, None] * D + j[None, :]
        msk = (r[:, None] < R) & (j[None, :] < HALF)
        s1 = tl.load(base, mask=msk, other=0.0).to(tl.float32)  # [BR, BH]
        s2 = tl.load(base + HALF, mask=msk, other=0.0).to(tl.float32)
        x1 += tl.sum(u[:, :, None] * s1[None, :, :], axis=1)
        x2 += tl.sum(u[:, :, None] * s2[None, :, :], axis=1)
    inv = tl.load(inv_ptr + j, mask=j < HALF, other=0.0)
    ang = (pos0 + row).to(tl.float32)[:, None] * inv[None, :]  # [BC, BH]
    cos, sin = tl.cos(ang), tl.sin(ang)
    o = out_ptr + m * C * D + t[:, None] * D + j[None, :]
    msk = (t[:, None] < C) & (j[None, :] < HALF)
    tl.store(o, (x1 * cos - x2 * sin).to(out_ptr.dtype.element_ty), mask=msk)
    tl.store(o + HALF, (x2 * cos + x1 * sin).to(out_ptr.dtype.element_ty), mask=msk)


def rebuild_keys(u: torch.Tensor, sv: torch.Tensor, heads: torch.Tensor, chunks: torch.Tensor, chunk_size: int,
                 pos0: int | torch.Tensor, inv_freq: torch.Tensor, block_r: int = 32) -> torch.Tensor:
    """u [T, r], sv [H, r, D], heads/chunks [M], pos0 int or [M], inv_freq [D/2] -> post-RoPE keys [M, chunk_size, D]."""
    T, R = u.shape
    H, R2, D = sv.shape
    if R2 != R or D % 2 or inv_freq.numel() != D // 2 or heads.shape != chunks.shape:
        raise ValueError(f"rebuild_keys: u [T, r], sv [H, r, D] (D even), inv_freq [D/2], heads/chunks [M]; got "
                         f"{tuple(u.shape)}, {tuple(sv.shape)}, {tuple(inv_freq.shape)}, {tuple(heads.shape)}, "
                         f"{tuple(chunks.shape)}")
    M = heads.numel()
    out = torch.empty(M, chunk_size, D, dtype=u.dtype, device=u.device)
    if M == 0:
        return out
    pos = torch.as_tensor(pos0, dtype=torch.int64, device=u.device).expand(M).contiguous()
    _rebuild_kernel[(M,)](u.contiguous(), sv.contiguous(), heads.contiguous(), chunks.contiguous(), pos,
                          inv_freq.float().contiguous(), out, R, chunk_size, D // 2,
                          BLOCK_C=triton.next_power_of_2(chunk_size), BLOCK_R=block_r,
                          BLOCK_H=triton.next_power_of_2(D // 2))
    return out
