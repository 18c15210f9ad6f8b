"""The press interface: what a KV-compression method declares and which hooks the engine calls.

The engine never asks which press runs (DESIGN rule 3). It creates the cache with
`query_window = press.query_window` (how many true post-RoPE queries per layer the press wants to
see) and calls `after_prefill` once and `after_decode` after every decoded token. A press decides
per sequence when to act (for R-KV: every `buffer` decoded tokens of *that* sequence).
"""

from __future__ import annotations

import torch


class Press:
    query_window: int = 0
    #: the cache must accumulate the attention every slot receives (`DenseCache.attn_sums`; H2O)
    needs_attention: bool = False

    def after_prefill(self, cache, decoded: torch.Tensor) -> None:
        """decoded [B]: decoded tokens per batch row so far (0 here)."""

    def after_decode(self, cache, decoded: torch.Tensor) -> None:
        """Called once per decode step, after every layer appended its new token."""

    def validate(self, max_positions: int) -> None:
        """Raise ValueError for settings that cannot work with this model."""


class NoPress(Press):
    """Full KV cache: never evicts."""
