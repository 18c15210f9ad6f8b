"""Low-rank pre-RoPE key cache: one joint SVD per layer and sequence over all KV heads.

ShadowKV (arXiv 2410.21465, `get_svd` in the authors' `models/kv_cache.py`) observes that pre-RoPE keys
are low-rank; RoPE would mix positions into the spectrum, so factorise *before* RoPE and re-apply RoPE
at the original positions when a chunk is rebuilt. One U is shared by the heads, SV is split per head.
"""

from __future__ import annotations

import torch

from tessera.layers.rope import RotaryEmbedding, apply_rope


def factorize(k_pre: torch.Tensor, rank: int, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """k_pre [H, T, D] pre-RoPE keys of one sequence -> U [T, r], SV [H, r, D] with U @ SV[h] ~= k_pre[h].

    The SVD runs in fp32 (as upstream) on the joint matrix [T, H*D]; nothing is centred.
    """
    H, T, D = k_pre.shape
    r = min(rank, T, H * D)
    joint = k_pre.permute(1, 0, 2).reshape(T, H * D).float()  # [T, H*D]
    u, s, vh = torch.linalg.svd(joint, full_matrices=False)
    sv = (s[:r, None] * vh[:r]).view(r, H, D).permute(1, 0, 2)  # [H, r, D]
    return u[:, :r].to(dtype).contiguous(), sv.to(dtype).contiguous()


def rebuild(u: torch.Tensor, sv: torch.Tensor, heads: torch.Tensor, chunks: torch.Tensor, chunk_size: int,
            pos0: int | torch.Tensor, rope: RotaryEmbedding) -> torch.Tensor:
    """Post-RoPE keys of `chunks` [M] (chunk ids) of KV heads `heads` [M] -> [M, chunk_size, D].

    u [T, r], sv [H, r, D]; token t of chunk c is row c*chunk_size + t of u, at position pos0 + row
    (pos0 an int, or [M] per chunk: a batch flattens u over its rows and offsets each row's positions).
    """
    if u.is_cuda:  # fused gather + GEMM + RoPE in one Triton pass; the torch code below is its reference
        from tessera.kernels.shadowkv.rebuild import rebuild_keys

        return rebuild_keys(u, sv, heads, chunks, chunk_size, pos0, rope.inv_freq)
    rows = chunks[:, None] * chunk_size + torch.arange(chunk_size, device=u.device)  # [M, C]
    k = torch.bmm(u[rows].float(), sv[heads].float())  # [M, C, D] pre-RoPE
    pos = rows + (pos0[:, None] if torch.is_tensor(pos0) else pos0)  # [M, C]
    cos, sin = rope.cos_sin(pos.reshape(1, -1), torch.float32)  # [1, 1, M*C, D]
    M, C, D = k.shape
    return apply_rope(k.reshape(1, 1, M * C, D), cos, sin).view(M, C, D).to(u.dtype)
