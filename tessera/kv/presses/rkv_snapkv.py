"""SnapKV as the R-KV authors run it: R-KV's importance term alone (lambda = 1).

In the R-KV repository (github.com/Zefan-Cai/R-KV @d15c976, `rkv/compression/snapkv.py`) the decode-time
SnapKV baseline of arXiv 2505.24133 is R-KV's scorer without the redundancy term: attention of the last
alpha cached post-RoPE queries, GQA max of raw logits before an fp32 softmax over the non-window keys,
mean over the window, max-pool of kernel 7. So R-KV against this press isolates the paper's idea (the
redundancy term). Our `snapkv` press follows the SnapKV paper instead (arXiv 2404.14469: sum, avg-pool 5).
The redundancy pass is skipped, not multiplied by zero: the press costs O(alpha * n) per head.
"""

from __future__ import annotations

import torch

from tessera.kv.presses.registry import register_press
from tessera.kv.presses.rkv import RKVPress
from tessera.kv.presses.scorer import Candidates


@register_press("rkv-snapkv")
class RKVSnapKVPress(RKVPress):
    def __init__(self, budget: int = 1024, buffer: int = 128, window: int = 8, kernel: int = 7,
                 order: str = "position", dtype: str = "fp32"):
        super().__init__(budget, buffer, window, lam=1.0, kernel=kernel, order=order, dtype=dtype)

    def score(self, c: Candidates) -> torch.Tensor:
        return self.importance(c)
