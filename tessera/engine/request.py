"""One request's life in the step engine: its prompt and settings, what it has generated, and when."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from tessera.config import SamplingParams
from tessera.engine.stopping import StopChecker
from tessera.kv.presses import Press


@dataclass(frozen=True)
class KVBound:
    """The most KV memory a request can make its cohort hold (see `kv_budget.py`)."""

    slots: int  # cache slots its row can reach
    slot_bytes: int  # bytes per slot and row (keys, values, positions, per-slot press state)
    row_bytes: int  # bytes per row independent of length (e.g. a press's query ring)


@dataclass(eq=False)
class Request:
    id: str
    prompt_ids: list[int]
    params: SamplingParams
    press: Press
    kv: str
    kv_options: dict
    stop: StopChecker
    generator: torch.Generator | None  # None: greedy
    bound: KVBound
    index: int = 0  # which of its prompt's n completions
    decoded: int = 0  # decode steps this request took part in (press hooks count per row)
    last_token: int | None = None  # sampled, not yet fed to the model
    logprobs: list[dict[int, float]] | None = None
    arrival: float = field(default_factory=time.perf_counter)
    first_token_at: float | None = None
    finished_at: float | None = None

    @property
    def cohort_key(self) -> tuple:
        """Requests with equal keys can share one cache: the same backend, options and acting press."""
        return (self.kv, repr(sorted(self.kv_options.items())), self.press if self.press.acts_on_cache else None)

    @property
    def mergeable(self) -> bool:
        """May join a running cache: without an acting press, or with one that schedules every row by its
        own decode count (R-KV and its baselines), whose rows need not have been prefilled together."""
        return not self.press.acts_on_cache or self.press.per_row_schedule

    @property
    def next_position(self) -> int:
        """Logical position of `last_token` once fed (positions are logical, never a cache length)."""
        return len(self.prompt_ids) + self.decoded
