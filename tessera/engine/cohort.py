"""Cohorts: the caches of a continuous batch, and one forward over all of them.

Requests with different KV settings (backend, options, press and budget) cannot share one cache, so the
running batch is a list of cohorts, each a cache with its press and its rows. One forward serves them
all: the linears run on every row at once, and `CohortsCache` hands each cache the rows it holds
(slices of q/k/v and of the step context), so attention and compression stay per cohort. A cohort takes
in new rows of its setting as they are admitted (`DenseCache.extend`) when its press schedules every row
by that row's own decode count (R-KV and its baselines, or no press); one with another press keeps the
rows it was prefilled with (see `Request.mergeable`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from tessera.engine.kv_budget import cohort_bytes
from tessera.engine.request import Request
from tessera.kv.backend import KVCache, StepContext


@dataclass(eq=False)
class Cohort:
    key: tuple
    cache: KVCache
    reqs: list[Request] = field(default_factory=list)

    def __post_init__(self):
        self._hold()

    def _hold(self) -> None:
        """Hold a dense cache at its rows' reservation (`kv_budget.kv_bound`), so that a growth step never
        allocates past what the admission reserved: past the longest request's end, or, once a row with a
        larger reservation has left, past the remaining rows' (a press may hold it lower still)."""
        bound = getattr(self.cache, "bound_capacity", None)
        if callable(bound) and self.reqs:
            bound(max(r.bound.slots for r in self.reqs))

    @property
    def press(self):
        return self.reqs[0].press

    @property
    def can_extend(self) -> bool:
        return self.reqs[0].mergeable and callable(getattr(self.cache, "extend", None))

    def decoded(self, device) -> torch.Tensor:  # [B] decode steps per row, what press hooks schedule by
        return torch.tensor([r.decoded for r in self.reqs], dtype=torch.long, device=device)

    def bound_bytes(self, extra: list[Request] = ()) -> int:
        return cohort_bytes([r.bound for r in (*self.reqs, *extra)])

    def retire(self, keep: list[int]) -> None:
        """Keep rows `keep` (the others finished or were aborted): their KV is freed at once."""
        if len(keep) < len(self.reqs):
            if keep:
                self.cache.select(torch.tensor(keep, device=_device(self.cache)))
            self.reqs = [self.reqs[i] for i in keep]
            self._hold()

    def absorb(self, other: Cohort) -> None:
        self.cache.extend(other.cache)
        self.reqs += other.reqs


def _device(cache) -> torch.device:
    return getattr(cache, "device", torch.device("cpu"))


class CohortsCache(KVCache):
    """A KV backend over several cohorts' caches, rows in cohort order (one forward for all of them)."""

    def __init__(self, cohorts: list[Cohort], ctx: StepContext):
        self.parts, a = [], 0
        for c in cohorts:
            b = a + len(c.reqs)
            sub = StepContext(positions=ctx.positions[a:b], new_lens=ctx.new_lens[a:b], is_prefill=ctx.is_prefill)
            self.parts.append((c.cache, a, b, sub))
            a = b
        self.wants_pre_rope_keys = any(c.cache.wants_pre_rope_keys for c in cohorts)

    def observe_pre_rope_keys(self, layer, k_pre, ctx):
        for cache, a, b, sub in self.parts:
            if cache.wants_pre_rope_keys:
                cache.observe_pre_rope_keys(layer, k_pre[a:b], sub)

    def attend(self, layer, q, k, v, ctx):  # q [B, Hq, S, D], k/v [B, Hkv, S, D] -> [B, Hq, S, D]
        return torch.cat([cache.attend(layer, q[a:b], k[a:b], v[a:b], sub) for cache, a, b, sub in self.parts])

    def select(self, rows):
        raise RuntimeError("CohortsCache lives for one forward; retire rows through their cohort")

    def nbytes(self) -> int:
        return sum(cache.nbytes() for cache, *_ in self.parts)


def forward_cache(cohorts: list[Cohort], ctx: StepContext) -> KVCache:
    """The cache to hand the model: the cohort's own when there is one (no slicing at all)."""
    return cohorts[0].cache if len(cohorts) == 1 else CohortsCache(cohorts, ctx)
