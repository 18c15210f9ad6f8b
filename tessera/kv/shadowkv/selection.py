"""Chunk landmarks, static outliers, per-step top-k selection and slot reuse.

Follows the authors' reference class (ShadowKV, arXiv 2410.21465; `ShadowKVCache.prefill_kv_cache` and
`get_retrieval_position_ids` in github.com/ByteDance-Seed/ShadowKV `models/kv_cache.py`) with two
generalisations: the score scale is 1/sqrt(D) (upstream hard-codes 1/sqrt(128)), and slot reuse (upstream's
`map.cuh`, CUDA-only) is written in torch so the reference path also skips rebuilding hit chunks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tessera.kernels.shadowkv.score import landmark_scores_ref
from tessera.kv.quest import page_bounds

EMPTY = -1  # a sparse slot that holds no chunk yet
DISABLED = -2  # a slot past its row's own budget (rows of a batch differ): never filled, never attended


def landmarks_and_outliers(k: torch.Tensor, chunk_size: int, n_outliers: int, kind: str = "mean"):
    """k [H, T, D] post-RoPE context keys (T a multiple of chunk_size).

    Returns landmarks [H, n - n_outliers, W] of the non-outlier chunks, their chunk ids [H, n - n_outliers]
    and the outlier chunk ids [H, n_outliers]. kind "mean": the mean key (W = D, the paper); "bounds": the
    element-wise min then max of the chunk's keys (W = 2D, Quest's page summary). A chunk's outlier score
    is the minimum cosine similarity of one of its keys to the chunk mean: low means the mean represents
    it badly (the same outliers for both kinds, so that they differ only in how chunks are scored).
    """
    H, T, D = k.shape
    chunks = k.float().view(H, T // chunk_size, chunk_size, D)  # [H, n, C, D]
    mean = chunks.mean(2)  # [H, n, D]
    score = F.cosine_similarity(chunks, mean[:, :, None], dim=-1).amin(-1)  # [H, n]
    order = score.argsort(dim=-1, stable=True)  # lowest similarity first
    outliers = order[:, :n_outliers].sort(-1).values  # [H, n_out]
    keep = order[:, n_outliers:].sort(-1).values  # [H, n - n_out]
    summary = mean if kind == "mean" else torch.cat(page_bounds(chunks.flatten(1, 2), chunk_size), -1)  # [H, n, W]
    return summary.gather(1, keep[..., None].expand(-1, -1, summary.shape[-1])).to(k.dtype), keep, outliers


def select_chunks(q: torch.Tensor, landmarks: torch.Tensor, ids: torch.Tensor, n_valid: torch.Tensor, k: int
                  ) -> torch.Tensor:
    """q [H, G, D] post-RoPE queries, landmarks [H, n, W] with chunk ids [H, n] of which the first
    n_valid [H] are real (the rest pad a batch) -> top-k chunk ids [H, k]; H may be batch x KV heads.

    softmax(q . landmark / sqrt(D)) over a head's real chunks per query head, max-pooled over the GQA
    group, top-k per KV head. W = 2D means "bounds" landmarks [min | max]: the logit is then the upper
    bound of q . key over the chunk, sum_d max(q_d min_d, q_d max_d) = [min(q, 0) | max(q, 0)] . [min | max],
    so the same scoring (and Triton kernel) serves both kinds. A head with fewer than k real chunks gets
    -1 in the surplus places.
    """
    D = q.shape[-1]
    if landmarks.shape[-1] == 2 * D:
        q = torch.cat([q.clamp(max=0), q.clamp(min=0)], -1)  # [H, G, 2D]
    elif landmarks.shape[-1] != D:
        raise ValueError(f"select_chunks: landmarks of width {landmarks.shape[-1]} for queries of width {D}")
    if q.is_cuda:  # fused Triton scoring (no [H, G, n] logits in memory); torch reference elsewhere
        from tessera.kernels.shadowkv.score import landmark_scores

        pooled = landmark_scores(q, landmarks, n_valid, scale=D**-0.5)  # [H, n], -1 at padding
    else:
        pooled = landmark_scores_ref(q, landmarks, n_valid, scale=D**-0.5)
    top = pooled.topk(k, dim=-1).indices  # [H, k]
    return ids.gather(1, top)


def assign_slots(slot_ids: torch.Tensor, wanted: torch.Tensor):
    """Slot reuse across steps. slot_ids [H, k]: chunk id held by each slot (-1: empty); wanted [H, k].

    Chunks already resident keep their slot (a hit: no rebuild, no fetch); each missing chunk takes a slot
    whose chunk is no longer wanted. Returns (heads [M], slots [M], chunks [M]) of the misses to fill, and
    the number of hits. DISABLED slots are wanted as DISABLED: they match themselves and are not counted.
    """
    H, k = wanted.shape
    resident = (wanted[:, :, None] == slot_ids[:, None, :]).any(-1)  # [H, k] wanted chunk already in a slot
    still_wanted = (slot_ids[:, :, None] == wanted[:, None, :]).any(-1)  # [H, k] slot keeps its chunk
    free_first = still_wanted.to(torch.int8).argsort(dim=-1, stable=True)  # [H, k] free slots first
    miss_first = resident.to(torch.int8).argsort(dim=-1, stable=True)  # [H, k] missing chunks first
    n_miss = (~resident).sum(-1)  # [H]; equals the number of free slots (both sets have k distinct ids)
    take = torch.arange(k, device=wanted.device)[None] < n_miss[:, None]  # [H, k]
    heads = torch.arange(H, device=wanted.device)[:, None].expand(H, k)[take]
    return heads, free_first[take], wanted.gather(1, miss_first)[take], int((resident & (wanted >= 0)).sum())
