"""R-KV's redundancy score, by definition (the torch reference of `blocked.py` and `redundancy.py`).

Cai et al., arXiv 2505.24133, Eq. (6); semantics of the authors' `rkv/utils.py::cal_similarity`
(github.com/Zefan-Cai/R-KV @d15c976), per batch row and KV head over the n held keys:
  S = cos(K, K), diag 0; r(i) = most recent j with S_ij > tau (0 if none); S[i, r(i)] = 0
  redundancy_j = softmax_j( (1/n) sum_i S_ij )
Older near-duplicates get the larger score (their column keeps the mass of every later copy).

The fused paths never build S. S is symmetric, so column j's sum before the exemptions is row j's sum,
and the exemptions remove one entry per row: row i's own exempted value S_{i, r(i)} from column r(i).
Per row, three numbers are enough (`row_stats_ref`): the row sum, r(i) and S_{i, r(i)}.
"""

from __future__ import annotations

import torch

EPS = 1e-8  # the authors' key-norm epsilon: fine in fp32 and bf16 (fp16 would need ~1e-3)


def normalized_keys(keys: torch.Tensor, valid: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
    """keys [R, H, N, D], valid [R, N] -> unit keys in `dtype`, zero at padding (no similarity to anything)."""
    k = keys.to(dtype)
    return k / (k.norm(dim=-1, keepdim=True) + EPS) * valid[:, None, :, None].to(dtype)


def redundancy_ref(keys: torch.Tensor, valid: torch.Tensor, threshold: float = 0.5,
                   dtype=torch.float32) -> torch.Tensor:
    """keys [R, H, N, D], valid [R, N] (slot holds a token) -> redundancy [R, H, N] (softmax over the valid
    slots, 0 at padding), computed in `dtype` as the authors' code does in the model's dtype."""
    k = normalized_keys(keys, valid, dtype)
    N = k.shape[2]
    s = k @ k.transpose(-1, -2)  # [R, H, N, N]; row i = query token
    s.diagonal(dim1=-2, dim2=-1).zero_()
    idx = torch.arange(N, device=k.device)
    last = torch.where(s > threshold, idx, 0).amax(-1, keepdim=True)  # [R, H, N, 1]; no match -> column 0
    s.scatter_(-1, last, 0.0)
    lens = valid.sum(-1)  # [R]
    col = (s.float().sum(-2) / lens[:, None, None]).to(dtype)  # column mean over the n real rows
    return torch.softmax(col.masked_fill(~valid[:, None], float("-inf")), -1).nan_to_num(0.0)


def row_stats_ref(keys: torch.Tensor, valid: torch.Tensor, threshold: float = 0.5):
    """-> (row sums [R, H, N] fp32, r(i) [R, H, N] int64, S_{i, r(i)} [R, H, N] fp32): the per-row numbers
    the fused paths compute, here from the full matrix. Padding rows: 0, 0, 0."""
    k = normalized_keys(keys, valid)
    N = k.shape[2]
    s = k @ k.transpose(-1, -2)
    s.diagonal(dim1=-2, dim2=-1).zero_()
    last = torch.where(s > threshold, torch.arange(N, device=k.device), 0).amax(-1)
    return s.sum(-1), last, s.gather(-1, last[..., None])[..., 0]


def redundancy_from_row_stats(rowsum: torch.Tensor, last: torch.Tensor, lastval: torch.Tensor,
                              valid: torch.Tensor) -> torch.Tensor:
    """Column means after the exemptions (row sums minus each row's exempted entry, moved to its column),
    then the softmax over valid slots: [R, H, N] fp32, 0 at padding."""
    col = rowsum.float().scatter_add(-1, last.long(), -lastval.float())
    col = col / valid.sum(-1)[:, None, None]
    return torch.softmax(col.masked_fill(~valid[:, None], float("-inf")), -1).nan_to_num(0.0)
