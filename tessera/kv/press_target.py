"""What a KV-compression press may read and do on a cache: the one interface between the two.

A press (tessera.kv.presses) sees a cache only through `PressTarget`; the dense cache implements it.
Backends that decide themselves what is attended (ShadowKV, Quest) do not, and refuse presses.

Layout the methods describe, per layer: every batch row holds `lengths(layer)[b]` tokens in slots
[0, lengths[b]) of every KV head, in position order. After per-head eviction slot t of two heads can
hold different tokens, so each slot carries its token's logical position (positions stay logical:
a kept token keeps the RoPE of its true position). Shapes: B batch rows, R selected rows, Hkv KV
heads, Hq query heads, D head dim, W query window.

The optional state (a ring of recent queries, accumulated attention) costs memory or compute on
every step, so a cache keeps it only after a press asked for it, in `Press.prepare`, before the
first forward.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch


class PressTarget(ABC):
    @property
    @abstractmethod
    def num_layers(self) -> int:
        """Layers of the cache; a press acting on a row acts on every layer."""

    # ---- read -----------------------------------------------------------------------------
    @abstractmethod
    def lengths(self, layer: int) -> torch.Tensor:
        """[B] long: tokens each row holds in `layer` (slot t holds a token iff t < lengths[b])."""

    @abstractmethod
    def keys(self, layer: int, rows: torch.Tensor, n: int) -> torch.Tensor:
        """[R, Hkv, n, D] post-RoPE keys of slots [0, n) of rows `rows` [R] (slots past a row's length: padding)."""

    @abstractmethod
    def positions(self, layer: int, rows: torch.Tensor, n: int) -> torch.Tensor:
        """[R, Hkv, n] int32 logical positions of slots [0, n) of rows `rows` [R]."""

    # ---- optional state, kept only on request ----------------------------------------------
    @abstractmethod
    def request_queries(self, window: int) -> None:
        """From now on keep each layer's last `window` post-RoPE queries per row (prompt and decoded)."""

    @abstractmethod
    def window_queries(self, layer: int, rows: torch.Tensor) -> torch.Tensor:
        """[R, Hq, W, D] the last W post-RoPE queries of rows `rows` [R], oldest first (after `request_queries`)."""

    @abstractmethod
    def request_attention_sums(self) -> None:
        """From now on add up the softmax attention every slot receives (one extra Q K^T per step)."""

    @abstractmethod
    def attention_sums(self, layer: int, rows: torch.Tensor, n: int) -> torch.Tensor:
        """[R, Hkv, n] fp32 attention received by slots [0, n), summed over every query and over the query
        heads of a KV head's group (after `request_attention_sums`)."""

    # ---- act ------------------------------------------------------------------------------
    @abstractmethod
    def keep(self, layer: int, rows: torch.Tensor, idx: torch.Tensor) -> None:
        """Keep, for rows `rows` [R], only slots `idx` [R, Hkv, n] of `layer`, moved to slots [0, n) in that
        order; other rows are untouched. The freed capacity is released by `limit_capacity`."""

    @abstractmethod
    def limit_capacity(self, cap: int) -> None:
        """Hold every layer at max(cap, longest row) slots: free the rest now, and grow no further while
        the rows fit in `cap` (so a growth step never allocates slots the press will not let rows use)."""
