"""R-KV: redundancy-aware KV compression for reasoning models (decode time).

Cai et al., "R-KV: Redundancy-aware KV Cache Compression for Reasoning Models", arXiv 2505.24133
(NeurIPS 2025); semantics restated from the authors' `rkv/compression/r1_kv.py` and
`rkv/utils.py::cal_similarity` (github.com/Zefan-Cai/R-KV @d15c976).

Per row and per KV head, over the n held tokens of which the last `window` (alpha) are the window:
  I = maxpool_7( mean_alpha( softmax_fp32( max_group(Q K^T / sqrt d) )[non-window] ) )
  S = cos(K, K), diag 0; r(i) = most recent j with S_ij > tau (0 if none); S[i, r(i)] = 0
  Rd = softmax_j( (1/n) sum_i S_ij )   over all n, then sliced to the non-window tokens
  Z = lam * I - (1 - lam) * Rd         keep top (budget - alpha) of Z plus the alpha newest
Older near-duplicates get the larger redundancy and go first. The O(n^2) redundancy pass runs in
`tessera.kernels.rkv` (a fused Triton kernel on CUDA, row blocks on the CPU; `impl="reference"` builds
the full matrix).

Defaults are ours; the published code differs in three settings, each an option here (docs/kv_compression.md
lists every deviation): `lam` 0.07 there (its README and run script say 0.1, our default), `order="score"`
(kept slots in top-k order, then the window; ours: position order, which changes which neighbours the
max-pool and the "most recent similar key" rule see at the next compression), and `dtype="bf16"` (scores
computed in the model's bf16; ours: fp32, where the key-norm epsilon cannot underflow). `rkv-published` is
R-KV with all three.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tessera.kernels.rkv import redundancy, redundancy_ref
from tessera.kv.presses.registry import register_press
from tessera.kv.presses.scorer import Candidates, ScorerPress
from tessera.kv.presses.window_attention import window_attention

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


@register_press("rkv")
class RKVPress(ScorerPress):
    def __init__(self, budget: int = 1024, buffer: int = 128, window: int = 8, lam: float = 0.1,
                 kernel: int = 7, threshold: float = 0.5, order: str = "position", dtype: str = "fp32",
                 impl: str = "auto"):
        super().__init__(budget, buffer, window, order)
        if not 0.0 <= lam <= 1.0:
            raise ValueError(f"lam must be in [0, 1], got {lam}")
        if kernel < 1 or kernel % 2 == 0:
            raise ValueError(f"kernel must be odd and >= 1, got {kernel}")
        if not 0.0 <= threshold < 1.0:
            raise ValueError(f"threshold must be in [0, 1), got {threshold}")
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        if impl not in ("auto", "reference", "blocked", "triton"):
            raise ValueError(f"impl must be auto, reference, blocked or triton, got {impl!r}")
        self.lam, self.kernel, self.threshold = lam, kernel, threshold
        self.dtype, self.impl = DTYPES[dtype], impl

    def score(self, c: Candidates) -> torch.Tensor:
        imp = self.importance(c)
        red = torch.cat([self.redundancy(c, r) for r in _chunks(c)], 0)
        return self.lam * imp - (1 - self.lam) * red  # in self.dtype, as the mix of the authors' code

    def importance(self, c: Candidates) -> torch.Tensor:  # [R, H, N] in self.dtype
        a = window_attention(c, self.dtype).mean(2).to(self.dtype)  # [R, H, N]; non-candidate slots are 0
        R, H, N = a.shape
        # max-pool along slots; the zeros at window/padding slots cannot raise a max of probabilities
        return F.max_pool1d(a.view(R * H, 1, N), self.kernel, 1, self.kernel // 2).view(R, H, N)

    def redundancy(self, c: Candidates, rows: slice) -> torch.Tensor:  # [r, H, N] in self.dtype
        if self.dtype != torch.float32:  # the authors' arithmetic in their dtype: the full matrix
            return redundancy_ref(c.keys[rows], c.valid[rows], self.threshold, self.dtype)
        return redundancy(c.keys[rows], c.valid[rows], self.threshold, self.impl)


@register_press("rkv-published")
class PublishedRKVPress(RKVPress):
    """R-KV with the published code's settings: lam 0.07, kept slots in score order, bf16 scores."""

    def __init__(self, budget: int = 1024, buffer: int = 128, window: int = 8, lam: float = 0.07,
                 order: str = "score", dtype: str = "bf16", **kw):
        super().__init__(budget, buffer, window, lam=lam, order=order, dtype=dtype, **kw)


def _chunks(c: Candidates, max_elems: int = 1 << 25):
    """Row slices whose [r, H, N, N] similarity matrix stays under `max_elems` floats (the reference path)."""
    R, H, N = c.keys.shape[:3]
    step = max(1, max_elems // (H * N * N))
    return [slice(i, i + step) for i in range(0, R, step)]
