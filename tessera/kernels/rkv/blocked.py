"""R-KV's per-row redundancy statistics on the CPU, in row blocks: the n x n similarity matrix is never held
whole (a block of rows at a time stays in cache), and the "most recent similar key" is found as the first
match in a column-reversed block (a uint8 max) instead of a where/amax over an int64 index matrix. Same outputs as
`reference.row_stats_ref` (the definition); the fused GPU version is `redundancy.py`.
"""

from __future__ import annotations

import torch

from tessera.kernels.rkv.reference import normalized_keys

BLOCK_ELEMS = 1 << 18  # floats per block of similarity rows (1 MiB): about the L2 of one core


def row_stats_blocked(keys: torch.Tensor, valid: torch.Tensor, threshold: float = 0.5, block_elems: int = BLOCK_ELEMS):
    """keys [R, H, N, D], valid [R, N] -> (row sums, r(i), S_{i, r(i)}), each [R, H, N] (see reference.py)."""
    k = normalized_keys(keys, valid)  # [R, H, N, D] fp32, zero at padding
    R, H, N, _ = k.shape
    krev_t = k.flip(2).transpose(-1, -2).contiguous()  # [R, H, D, N]: column c is key N-1-c
    rowsum = torch.empty(R, H, N)
    last = torch.empty(R, H, N, dtype=torch.long)
    lastval = torch.empty(R, H, N)
    bm = max(1, min(N, block_elems // max(1, R * H * N)))
    for i0 in range(0, N, bm):
        i1 = min(N, i0 + bm)
        s = k[:, :, i0:i1] @ krev_t  # [R, H, b, N], reversed columns
        b = i1 - i0
        # the diagonal (j = i) sits at column N-1-i: element (t, N-1-i0-t) of the block
        s.as_strided((R, H, b), (H * b * N, b * N, N - 1), s.storage_offset() + N - 1 - i0).zero_()
        rowsum[:, :, i0:i1] = s.sum(-1)
        # first True of the reversed row = the largest j; max(dim) returns the first maximal index (documented),
        # and over uint8 it is ~8x faster here than argmax
        has, first = (s > threshold).view(torch.uint8).max(-1, keepdim=True)
        has = has[..., 0].bool()
        last[:, :, i0:i1] = torch.where(has, N - 1 - first[..., 0], 0)
        lastval[:, :, i0:i1] = torch.where(has, s.gather(-1, first)[..., 0], s[..., N - 1])  # no match: column 0
    return rowsum, last, lastval
