"""H2O: heavy hitters (accumulated attention) + a recent window.

Zhang et al., "H2O: Heavy-Hitter Oracle for Efficient Generative Inference of LLMs",
arXiv 2306.14048 (github.com/FMInference/H2O `modify_llama.py`): a token's score is the attention it
has received from every query so far (prompt and decoded, summed over the query heads of its KV
head's group); keep the `budget - recent` heaviest plus the `recent` newest tokens (an even split
by default, as in the paper). The cache accumulates the scores (`uses_attention`). H2O evicts at
every step; here it runs on the shared scheduler (every `buffer` tokens) so all methods are
compared at the same cache sizes.
"""

from __future__ import annotations

import torch

from tessera.kv.presses.registry import register_press
from tessera.kv.presses.scorer import Candidates, ScorerPress


@register_press("h2o")
class H2OPress(ScorerPress):
    uses_queries = False
    uses_attention = True

    def __init__(self, budget: int = 1024, buffer: int = 128, window: int = 8, recent: int | None = None):
        super().__init__(budget, buffer, window)
        recent = max(window, budget // 2) if recent is None else recent
        if not window <= recent <= budget:
            raise ValueError(f"recent must be in [window, budget] = [{window}, {budget}], got {recent}")
        self.recent = recent

    def score(self, c: Candidates) -> torch.Tensor:
        slot = torch.arange(c.keys.shape[2], device=c.lens.device)
        is_recent = slot[None] >= (c.lens - self.recent)[:, None]  # [R, N]
        return c.attn.masked_fill(is_recent[:, None], float("inf"))
