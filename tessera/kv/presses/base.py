"""The press interface: what a KV-compression method declares and which hooks the engine calls.

The engine never asks which press runs: it hands the press to the cache factory, which calls
`prepare` on a fresh cache (the press requests the optional state it reads, e.g. a ring of recent
queries), then calls `after_prefill` once and `after_decode` after every decoded token. A press acts
on the cache only through `tessera.kv.press_target.PressTarget`, and decides per sequence when to act
(for R-KV: every `buffer` decoded tokens of *that* sequence).
"""

from __future__ import annotations

import torch

from tessera.kv.press_target import PressTarget
from tessera.kv.presses.registry import register_press


class Press:
    #: the press changes the cache, so it needs a backend that implements PressTarget (backends that
    #: decide themselves what is attended, like ShadowKV, refuse such presses)
    acts_on_cache: bool = True
    #: the press schedules and bounds every row by that row's own decode count (the `decoded` its hooks get),
    #: so a row prefilled later may join a cache the press already acts on (continuous batching merges them)
    per_row_schedule: bool = False

    def prepare(self, cache: PressTarget) -> None:
        """Called once on a fresh cache, before the prefill: request the optional state the press reads."""

    def after_prefill(self, cache: PressTarget, decoded: torch.Tensor) -> None:
        """decoded [B]: decoded tokens per batch row so far (0 here)."""

    def after_decode(self, cache: PressTarget, decoded: torch.Tensor) -> None:
        """Called once per decode step, after every layer appended its new token; decoded [B] counts it."""

    def validate(self, max_positions: int) -> None:
        """Raise ValueError for settings that cannot work with this model."""


@register_press("none", "full")
class NoPress(Press):
    """Full KV cache: never evicts."""

    acts_on_cache = False
