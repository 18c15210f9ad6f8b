"""The decode-time scheduler shared by R-KV and its baselines, and the scorer base.

R-KV (Cai et al., arXiv 2505.24133; github.com/Zefan-Cai/R-KV) compresses *while decoding*: every
`buffer` decoded tokens of a sequence, once that sequence's cache holds at least `budget` tokens,
each layer's cache is cut back to exactly `budget` tokens per KV head. The `window` newest tokens
(whose queries are the observation window) are always kept, so `budget` includes them. Between two
compressions a sequence grows from `budget` to `budget + buffer`, which is the capacity the cache
tensors are held at (memory is really freed: `DenseCache.keep` + `shrink`).

Fixes over the reference HF code (see shared/reference/rkv.md §5): triggers count the decoded
tokens of *each* sequence (not prompt + decoded, not a global counter that outlives a `generate`
call); batch rows never share scores; prompts are never compressed at prefill.

A scoring method subclasses `ScorerPress` and overrides only `score()` (DESIGN rule 2); top-k,
the always-kept window and the gather live here once.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tessera.kv.presses.base import Press


@dataclass
class Candidates:
    """What a scorer sees for the R batch rows being compressed in one layer.

    N is the longest of those rows; slots at or past a row's length are padding.
    """

    keys: torch.Tensor  # [R, Hkv, N, D] post-RoPE keys, in slot order (= position order)
    queries: torch.Tensor | None  # [R, Hq, W, D] last W post-RoPE queries, oldest first
    pos: torch.Tensor  # [R, Hkv, N] logical positions
    lens: torch.Tensor  # [R] tokens held per row
    valid: torch.Tensor  # [R, N] slot holds a token
    past: torch.Tensor  # [R, N] slot holds a token older than the window: an eviction candidate
    attn: torch.Tensor | None  # [R, Hkv, N] accumulated attention (only if `needs_attention`)


class ScorerPress(Press):
    """Decode-time compression to `budget` tokens per KV head every `buffer` decoded tokens."""

    #: the scorer reads the window's post-RoPE queries (the cache then keeps a ring of them)
    uses_queries: bool = True

    def __init__(self, budget: int = 1024, buffer: int = 128, window: int = 8):
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        if budget <= window:
            raise ValueError(f"budget ({budget}) must be larger than the window ({window}): "
                             "the budget includes the always-kept window")
        if buffer < window:
            raise ValueError(f"buffer ({buffer}) must be >= window ({window}): the window queries "
                             "must all come from tokens decoded since the last compression")
        self.budget, self.buffer, self.window = budget, buffer, window
        self.query_window = window if self.uses_queries else 0
        self.compressions = 0  # (row, step) compressions done, for tests and overhead accounting

    def validate(self, max_positions: int) -> None:
        if self.budget > max_positions:
            raise ValueError(f"budget ({self.budget}) is larger than the model's maximum of {max_positions} "
                             "positions: it could never be reached")

    def score(self, c: Candidates) -> torch.Tensor:  # -> [R, Hkv, N], higher = keep
        raise NotImplementedError

    # ---- scheduler --------------------------------------------------------------------------
    def after_prefill(self, cache, decoded) -> None:
        # Never evict at prefill (the HF reference's first-call quirk is not copied). Only cap
        # the capacity: no row can exceed budget + buffer, or its prompt + buffer before its
        # first compression, so growth never allocates slots that can never be used.
        self._cap(cache, int(cache.lens[0].max()) + self.buffer)

    def after_decode(self, cache, decoded: torch.Tensor) -> None:
        # lens are equal across layers: every layer appends the same tokens and compresses the
        # same rows. A row holding exactly `budget` tokens would keep everything: skip it.
        lens = cache.lens[0]
        due = (decoded % self.buffer == 0) & (lens > self.budget)  # [B]
        if not bool(due.any()):
            return
        rows = due.nonzero().squeeze(1)
        for layer in range(cache.L):
            cache.keep(layer, rows, self.select(cache, layer, rows))
        self.compressions += len(rows)
        self._cap(cache, int(cache.lens[0].max()))

    def _cap(self, cache, longest: int) -> None:
        """Hold the cache at max(budget + buffer, longest) slots and free the rest."""
        cap = max(self.budget + self.buffer, longest)
        cache.max_capacity = cap
        cache.shrink(extra=cap - int(cache.lens[0].max()))

    def select(self, cache, layer: int, rows: torch.Tensor) -> torch.Tensor:
        """Slots to keep for `rows` [R] of `layer`: [R, Hkv, budget], position-sorted."""
        lens = cache.lens[layer][rows]  # [R]
        N, W = int(lens.max()), self.window
        slot = torch.arange(N, device=lens.device)
        valid = slot[None] < lens[:, None]  # [R, N]
        past = slot[None] < (lens - W)[:, None]
        q = cache.queries[layer][rows] if cache.queries[layer] is not None else None
        attn = cache.attn_sums[layer][rows, :, :N] if getattr(cache, "attn_sums", None) is not None else None
        c = Candidates(keys=cache.k[layer][rows, :, :N], queries=q, pos=cache.pos[layer][rows, :, :N],
                       lens=lens, valid=valid, past=past, attn=attn)
        s = self.score(c).float().masked_fill(~past[:, None], float("-inf"))  # [R, H, N]
        # sorted: kept tokens stay in position order (topk returns them by score)
        top = s.topk(self.budget - W, dim=-1).indices.sort(-1).values  # [R, H, budget - W]
        win = (lens - W)[:, None, None] + torch.arange(W, device=lens.device)  # [R, 1, W]
        return torch.cat([top, win.expand(-1, s.shape[1], -1)], -1)


def window_attention(c: Candidates) -> torch.Tensor:
    """Attention of the W window queries over the candidate (non-window) keys: [R, Hkv, W, N] fp32.

    GQA as in R-KV's `compute_attention_scores(pooling="max")`: raw logits are max-pooled over the
    query heads of a KV head's group *before* the softmax. The softmax runs over the non-window
    keys only, in fp32 (no causal mask needed: every window query follows every candidate key).
    """
    R, Hq, W, D = c.queries.shape
    H = c.keys.shape[1]
    q = c.queries.float().view(R, H, Hq // H, W, D)  # query head g*... of kv head h: h*G + g
    logits = torch.einsum("rhgwd,rhnd->rhgwn", q, c.keys.float()) / D**0.5
    logits = logits.amax(2).masked_fill(~c.past[:, None, None], float("-inf"))  # [R, H, W, N]
    return torch.softmax(logits, dim=-1)
