"""Triton grouped GEMM for routed experts: out[r] = a[r] @ w[e(r)].T for rows grouped by expert.

The rows of expert e are a[offsets[e]:offsets[e + 1]] (a permutation sorted by expert, see
`tessera.layers.experts.permute`). A host-built tile table maps each program to (expert, first row), so
no program straddles two experts and empty experts launch nothing, as in the grouped GEMMs of
MegaBlocks (arXiv 2211.15841) and vLLM's `fused_moe` (its `moe_align_block_size` pads instead; we mask).
Accumulation is fp32 whatever the input dtype.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl


@triton.jit
def _grouped_gemm_kernel(a_ptr, w_ptr, c_ptr, tile_expert_ptr, tile_row_ptr, row_end_ptr, N, K,
                         BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                         F32_DOT: tl.constexpr):
    tile, nb = tl.program_id(0), tl.program_id(1)
    e = tl.load(tile_expert_ptr + tile)
    r0 = tl.load(tile_row_ptr + tile)
    r_end = tl.load(row_end_ptr + e)
    rows = r0 + tl.arange(0, BLOCK_M)
    cols = nb * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        a = tl.load(a_ptr + rows[:, None] * K + ks[None, :], mask=(rows[:, None] < r_end) & (ks[None, :] < K),
                    other=0.0)  # [BM, BK]
        w = tl.load(w_ptr + (e * N + cols[None, :]) * K + ks[:, None], mask=(cols[None, :] < N) & (ks[:, None] < K),
                    other=0.0)  # [BK, BN]: w[e] is [N, K] row-major, read transposed
        if F32_DOT:
            acc = tl.dot(a.to(tl.float32), w.to(tl.float32), acc, input_precision="ieee")
        else:
            acc = tl.dot(a, w, acc)
    tl.store(c_ptr + rows[:, None] * N + cols[None, :], acc.to(c_ptr.dtype.element_ty),
             mask=(rows[:, None] < r_end) & (cols[None, :] < N))


def _f32_dot(dtype: torch.dtype) -> bool:
    """Upcast under the interpreter (its bf16 dot is wrong) and for fp32 on a GPU (exact, no TF32)."""
    return os.environ.get("TRITON_INTERPRET") == "1" or dtype == torch.float32


def tile_table(offsets: torch.Tensor, block_m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """offsets [E + 1] -> (expert of each tile, first row of each tile): ceil(rows_e / block_m) tiles per e."""
    off = offsets.tolist()
    experts, starts = [], []
    for e in range(len(off) - 1):
        for r in range(off[e], off[e + 1], block_m):
            experts.append(e)
            starts.append(r)
    return torch.tensor(experts, dtype=torch.int32), torch.tensor(starts, dtype=torch.int32)


def grouped_gemm(a: torch.Tensor, w: torch.Tensor, offsets: torch.Tensor, block_m: int = 16, block_n: int = 32,
                 block_k: int = 32) -> torch.Tensor:
    """a [R, K] rows grouped by expert, w [E, N, K], offsets [E + 1] (offsets[-1] == R) -> [R, N] in a.dtype."""
    if a.dim() != 2 or w.dim() != 3 or w.shape[2] != a.shape[1] or offsets.shape != (w.shape[0] + 1,):
        raise ValueError(f"grouped_gemm: a [R, K], w [E, N, K], offsets [E + 1]; got {tuple(a.shape)}, "
                         f"{tuple(w.shape)}, {tuple(offsets.shape)}")
    if int(offsets[-1]) != a.shape[0] or a.dtype != w.dtype:
        raise ValueError(f"grouped_gemm: offsets[-1] = {int(offsets[-1])} must equal R = {a.shape[0]}, and a, w "
                         f"share a dtype ({a.dtype} vs {w.dtype})")
    R, K = a.shape
    E, N, _ = w.shape
    out = torch.empty(R, N, dtype=a.dtype, device=a.device)
    tiles_e, tiles_r = tile_table(offsets.cpu(), block_m)
    if len(tiles_e) == 0:
        return out
    row_end = offsets[1:].to(device=a.device, dtype=torch.int32)
    grid = (len(tiles_e), triton.cdiv(N, block_n))
    _grouped_gemm_kernel[grid](a.contiguous(), w.contiguous(), out, tiles_e.to(a.device), tiles_r.to(a.device),
                               row_end, N, K, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k,
                               F32_DOT=_f32_dot(a.dtype))
    return out


def grouped_gemm_ref(a: torch.Tensor, w: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Plain PyTorch: one matmul per expert, accumulated in fp32."""
    out = torch.empty(a.shape[0], w.shape[1], dtype=a.dtype, device=a.device)
    off = offsets.tolist()
    for e in range(w.shape[0]):
        out[off[e]:off[e + 1]] = (a[off[e]:off[e + 1]].float() @ w[e].float().T).to(a.dtype)
    return out
