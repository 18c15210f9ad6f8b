"""The scorer base: the decode-time schedule shared by R-KV and its baselines, top-k and the gather.

R-KV (Cai et al., arXiv 2505.24133; github.com/Zefan-Cai/R-KV) compresses *while decoding*: every
`buffer` decoded tokens of a sequence, once that sequence's cache holds at least `budget` tokens,
each layer's cache is cut back to exactly `budget` tokens per KV head. The `window` newest tokens
(whose queries are the observation window) are always kept, so `budget` includes them. Between two
compressions a sequence grows from `budget` to `budget + buffer`, which is the capacity the cache
tensors are held at (memory is really freed: `PressTarget.keep` + `limit_capacity`).

Where this differs from the authors' HF code: triggers count the decoded tokens of *each* sequence
(there, one counter of prompt + decoded tokens that is never reset between `generate` calls; their
PR #25 fixes the same leak in the vLLM port); batch rows never share scores (there, the similarity
uses row 0's keys, their issue #20); a prompt longer than the budget is not compressed at the first
step (R-KV is a decode-time method; prompt tokens can still be evicted later).

A scoring method subclasses `ScorerPress` and overrides only `score()`, as kvpress's `ScorerPress`
(github.com/NVIDIA/kvpress `presses/scorer_press.py`); top-k, the always-kept window and the gather
live here once. Unlike kvpress, memory is really freed, batches are supported and budgets are per head.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tessera.kv.press_target import PressTarget
from tessera.kv.presses.base import Press


@dataclass
class Candidates:
    """What a scorer sees for the R batch rows being compressed in one layer.

    N is the longest of those rows; slots at or past a row's length are padding.
    """

    keys: torch.Tensor  # [R, Hkv, N, D] post-RoPE keys, in slot order (= position order unless order="score")
    queries: torch.Tensor | None  # [R, Hq, W, D] last W post-RoPE queries, oldest first (if `uses_queries`)
    pos: torch.Tensor  # [R, Hkv, N] logical positions
    lens: torch.Tensor  # [R] tokens held per row
    valid: torch.Tensor  # [R, N] slot holds a token
    past: torch.Tensor  # [R, N] slot holds a token older than the window: an eviction candidate
    attn: torch.Tensor | None  # [R, Hkv, N] accumulated attention (if `uses_attention`)


class ScorerPress(Press):
    """Decode-time compression to `budget` tokens per KV head every `buffer` decoded tokens."""

    #: the scorer reads the window's post-RoPE queries (the cache then keeps a ring of them)
    uses_queries: bool = True
    #: the scorer reads the attention each slot has accumulated (one extra Q K^T per step)
    uses_attention: bool = False

    def __init__(self, budget: int = 1024, buffer: int = 128, window: int = 8, order: str = "position"):
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        if budget <= window:
            raise ValueError(f"budget ({budget}) must be larger than the window ({window}): "
                             "the budget includes the always-kept window")
        if buffer < window:
            raise ValueError(f"buffer ({buffer}) must be >= window ({window}): the window queries "
                             "must all come from tokens decoded since the last compression")
        if order not in ("position", "score"):
            raise ValueError(f"order must be 'position' or 'score', got {order!r}")
        self.budget, self.buffer, self.window = budget, buffer, window
        #: kept slots in position order (ours), or in score order then the window (the R-KV authors' code,
        #: whose topk is not sorted back): slot order is what a later max-pool or "most recent" rule sees
        self.order = order
        self.compressions = 0  # (row, step) compressions done, for tests and overhead accounting

    def validate(self, max_positions: int) -> None:
        if self.budget > max_positions:
            raise ValueError(f"budget ({self.budget}) is larger than the model's maximum of {max_positions} "
                             "positions: it could never be reached")

    def score(self, c: Candidates) -> torch.Tensor:  # -> [R, Hkv, N], higher = keep
        raise NotImplementedError

    # ---- scheduler --------------------------------------------------------------------------
    def prepare(self, cache: PressTarget) -> None:
        if self.uses_queries:
            cache.request_queries(self.window)
        if self.uses_attention:
            cache.request_attention_sums()

    per_row_schedule = True

    def after_prefill(self, cache: PressTarget, decoded) -> None:
        # Never evict at prefill. Only cap the capacity: no row can exceed budget + buffer, or its
        # prompt + buffer before its first compression, so growth never allocates slots that can
        # never be used.
        self._cap(cache, decoded)

    def after_decode(self, cache: PressTarget, decoded: torch.Tensor) -> None:
        # lengths are equal across layers: every layer appends the same tokens and compresses the
        # same rows. A row holding exactly `budget` tokens would keep everything: skip it.
        lens = cache.lengths(0)
        due = (decoded % self.buffer == 0) & (lens > self.budget)  # [B]
        if not bool(due.any()):
            return
        rows = due.nonzero().squeeze(1)
        for layer in range(cache.num_layers):
            cache.keep(layer, rows, self.select(cache, layer, rows))
        self.compressions += len(rows)
        self._cap(cache, decoded)

    def _cap(self, cache: PressTarget, decoded: torch.Tensor) -> None:
        """Hold the cache at the most any row can hold from now on, and free the rest.

        A row holding n tokens reaches at most n + (buffer - decoded % buffer) before its next trigger, where
        it is cut back to `budget` (or kept, if it holds no more), then grows by at most `buffer` again. Rows of
        one cache may be at different points of that schedule (continuous batching merges them), so the
        limit is per row: max(budget + buffer, max over rows of n + buffer - decoded % buffer). A row that was
        prefilled with the others and just compressed gives budget + buffer; at the prefill, prompt + buffer.
        """
        ahead = cache.lengths(0) + self.buffer - decoded.to(cache.lengths(0).device) % self.buffer  # [B]
        cache.limit_capacity(max(self.budget + self.buffer, int(ahead.max())))

    def select(self, cache: PressTarget, layer: int, rows: torch.Tensor) -> torch.Tensor:
        """Slots to keep for `rows` [R] of `layer`: [R, Hkv, budget], in `self.order`, the window last."""
        lens = cache.lengths(layer)[rows]  # [R]
        N, W = int(lens.max()), self.window
        slot = torch.arange(N, device=lens.device)
        valid = slot[None] < lens[:, None]  # [R, N]
        past = slot[None] < (lens - W)[:, None]
        c = Candidates(keys=cache.keys(layer, rows, N),
                       queries=cache.window_queries(layer, rows) if self.uses_queries else None,
                       pos=cache.positions(layer, rows, N), lens=lens, valid=valid, past=past,
                       attn=cache.attention_sums(layer, rows, N) if self.uses_attention else None)
        s = self.score(c).float().masked_fill(~past[:, None], float("-inf"))  # [R, H, N]
        top = s.topk(self.budget - W, dim=-1).indices  # [R, H, budget - W], best first
        if self.order == "position":  # slots are in position order, so sorted slots keep it
            top = top.sort(-1).values
        win = (lens - W)[:, None, None] + torch.arange(W, device=lens.device)  # [R, 1, W]
        return torch.cat([top, win.expand(-1, s.shape[1], -1)], -1)
