"""StreamingLLM: attention sinks + the most recent tokens, no score.

Xiao et al., "Efficient Streaming Language Models with Attention Sinks", arXiv 2309.17453
(github.com/mit-han-lab/streaming-llm `StartRecentKVCache`): keep the first `sinks` tokens and the
most recent ones. Driven by the shared decode-time scheduler, so the cache is cut back to `budget`
every `buffer` tokens. Deviation: kept keys keep the RoPE of their true positions (positions stay logical, as for every
press here) instead of being re-rotated to cache positions as the original does.
"""

from __future__ import annotations

import torch

from tessera.kv.presses.registry import register_press
from tessera.kv.presses.scorer import Candidates, ScorerPress


@register_press("streamingllm")
class StreamingLLMPress(ScorerPress):
    uses_queries = False

    def __init__(self, budget: int = 1024, buffer: int = 128, window: int = 8, sinks: int = 4):
        super().__init__(budget, buffer, window)
        if not 0 <= sinks <= budget - window:
            raise ValueError(f"sinks must be in [0, budget - window], got {sinks}")
        self.sinks = sinks

    def score(self, c: Candidates) -> torch.Tensor:
        recency = c.pos.float()  # [R, H, N]: newer = larger
        return recency.masked_fill(c.pos < self.sinks, float("inf"))
