"""H2O as the R-KV authors run it: the attention of the *last* query only (TOVA-like), no accumulation.

The R-KV repository's `rkv/compression/h2o.py` (github.com/Zefan-Cai/R-KV @d15c976) scores each cached
key by the fp32 softmax of the newest query's logits (GQA: raw logits max-pooled over the query group,
as in its `compute_attention_scores`) over the non-window keys, and keeps the top `budget - window` plus
the window. Our `h2o` press is the H2O paper's rule instead (arXiv 2306.14048: attention accumulated over
every query, plus a recent half). Two departures from that file, both because it cannot run as written:
it averages the scores over the KV heads before a per-head gather whose index shape does not match (we
score and keep per KV head, as every press here), and it forces its window to 1 (here `window` is the
scheduler's, 8 by default, so every method keeps the same always-kept tokens; pass window=1 for theirs).
"""

from __future__ import annotations

import torch

from tessera.kv.presses.registry import register_press
from tessera.kv.presses.scorer import Candidates, ScorerPress
from tessera.kv.presses.window_attention import window_attention


@register_press("rkv-h2o")
class RKVH2OPress(ScorerPress):
    def __init__(self, budget: int = 1024, buffer: int = 128, window: int = 8, order: str = "position"):
        super().__init__(budget, buffer, window, order)

    def score(self, c: Candidates) -> torch.Tensor:
        return window_attention(c)[:, :, -1]  # [R, H, N]: the newest query's row
