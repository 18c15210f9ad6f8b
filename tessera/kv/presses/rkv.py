"""R-KV: redundancy-aware KV compression for reasoning models (decode time).

Cai et al., "R-KV: Redundancy-aware KV Cache Compression for Reasoning Models", arXiv 2505.24133
(NeurIPS 2025); semantics restated from the authors' `rkv/compression/r1_kv.py` and
`rkv/utils.py::cal_similarity` (github.com/Zefan-Cai/R-KV @d15c976).

Per row and per KV head, over the n held tokens of which the last `window` (alpha) are the window:
  I = maxpool_7( mean_alpha( softmax_fp32( max_group(Q K^T / sqrt d) )[non-window] ) )
  S = cos(K, K), diag 0; r(i) = most recent j with S_ij > tau (0 if none); S[i, r(i)] = 0
  Rd = softmax_j( (1/n) sum_i S_ij )   over all n, then sliced to the non-window tokens
  Z = lam * I - (1 - lam) * Rd         keep top (budget - alpha) of Z plus the alpha newest
Older near-duplicates get the larger redundancy and go first. Everything runs in fp32, so the
key-normalisation epsilon cannot underflow (the reference's 1e-8 does in fp16).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tessera.kv.presses.registry import register_press
from tessera.kv.presses.scorer import Candidates, ScorerPress
from tessera.kv.presses.window_attention import window_attention


@register_press("rkv")
class RKVPress(ScorerPress):
    def __init__(self, budget: int = 1024, buffer: int = 128, window: int = 8, lam: float = 0.1,
                 kernel: int = 7, threshold: float = 0.5):
        super().__init__(budget, buffer, window)
        if not 0.0 <= lam <= 1.0:
            raise ValueError(f"lam must be in [0, 1], got {lam}")
        if kernel < 1 or kernel % 2 == 0:
            raise ValueError(f"kernel must be odd and >= 1, got {kernel}")
        self.lam, self.kernel, self.threshold = lam, kernel, threshold

    def score(self, c: Candidates) -> torch.Tensor:
        imp = self.importance(c)
        red = torch.cat([self.redundancy(c, r) for r in _chunks(c)], 0)
        return self.lam * imp - (1 - self.lam) * red

    def importance(self, c: Candidates) -> torch.Tensor:  # [R, H, N]
        a = window_attention(c).mean(2)  # [R, H, N]; non-candidate slots are 0
        R, H, N = a.shape
        # max-pool along tokens; the zeros at window/padding slots cannot raise a max of probabilities
        return F.max_pool1d(a.view(R * H, 1, N), self.kernel, 1, self.kernel // 2).view(R, H, N)

    def redundancy(self, c: Candidates, rows: slice) -> torch.Tensor:  # [r, H, N]
        k = F.normalize(c.keys[rows].float(), dim=-1)  # [r, H, N, D]
        valid, lens = c.valid[rows], c.lens[rows]
        N = k.shape[2]
        s = k @ k.transpose(-1, -2)  # [r, H, N, N] cosine similarity, row i = query token
        s.diagonal(dim1=-2, dim2=-1).zero_()
        s = s * (valid[:, None, :, None] & valid[:, None, None, :])  # padding: no similarity
        # exempt each token's most recent similar neighbour ("last"); no match -> column 0
        idx = torch.arange(N, device=k.device)
        last = ((s > self.threshold) * idx).amax(-1, keepdim=True)  # [r, H, N, 1]
        s.scatter_(-1, last, 0.0)
        col = s.sum(-2) / lens[:, None, None]  # column mean over the n real rows
        return torch.softmax(col.masked_fill(~valid[:, None], float("-inf")), -1)


def _chunks(c: Candidates, max_elems: int = 1 << 25):
    """Row slices whose [r, H, N, N] similarity matrix stays under `max_elems` floats."""
    R, H, N = c.keys.shape[:3]
    step = max(1, max_elems // (H * N * N))
    return [slice(i, i + step) for i in range(0, R, step)]
