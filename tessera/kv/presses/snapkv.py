"""SnapKV run at decode time, as the R-KV paper's baseline (compress every `buffer` tokens).

Li et al., "SnapKV: LLM Knows What You are Looking for Before Generation", arXiv 2404.14469
(github.com/FasterDecoding/SnapKV `snapkv_utils.py`): score = attention of the window queries
summed over the window, smoothed by an average pool of kernel 5. Window queries are the true cached
post-RoPE queries and GQA takes the max of raw logits over the group, as in R-KV's decode-time
adaptation, so the only difference from R-KV's importance term is SnapKV's own sum/avg-pool rule
and the absence of a redundancy term.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tessera.kv.presses.registry import register_press
from tessera.kv.presses.scorer import Candidates, ScorerPress
from tessera.kv.presses.window_attention import window_attention


@register_press("snapkv")
class SnapKVPress(ScorerPress):
    def __init__(self, budget: int = 1024, buffer: int = 128, window: int = 8, kernel: int = 5):
        super().__init__(budget, buffer, window)
        if kernel < 1 or kernel % 2 == 0:
            raise ValueError(f"kernel must be odd and >= 1, got {kernel}")
        self.kernel = kernel

    def score(self, c: Candidates) -> torch.Tensor:
        a = window_attention(c).sum(2)  # [R, H, N]
        R, H, N = a.shape
        # zero padding, as SnapKV's avg_pool1d over the candidate vector (count_include_pad)
        return F.avg_pool1d(a.view(R * H, 1, N), self.kernel, 1, self.kernel // 2).view(R, H, N)
