"""Admission: waiting requests join the running batch in arrival order while their KV fits under a cap.

FIFO without overtaking: when the oldest waiting request does not fit, nobody behind it is admitted
either, so a long request cannot starve behind a stream of short ones; it gets in as soon as retired
requests have freed enough. The cap bounds what the caches can grow to (`kv_budget.py`), not what they
hold now, so a request admitted once always runs to the end without ever exceeding the cap. A request
that could not fit even alone is refused when it arrives.
"""

from __future__ import annotations

from collections import deque

from tessera.engine.cohort import Cohort
from tessera.engine.kv_budget import cohort_bytes
from tessera.engine.request import Request


class Scheduler:
    def __init__(self, kv_cap_bytes: int | None = None, max_running: int | None = None):
        if kv_cap_bytes is not None and kv_cap_bytes <= 0:
            raise ValueError(f"kv_cap_bytes must be positive, got {kv_cap_bytes}")
        if max_running is not None and max_running < 1:
            raise ValueError(f"max_running must be >= 1, got {max_running}")
        self.cap, self.max_running = kv_cap_bytes, max_running
        self.waiting: deque[Request] = deque()

    def check(self, req: Request) -> None:
        """Refuse a request that could not fit under the cap even alone."""
        need = cohort_bytes([req.bound])
        if self.cap is not None and need > self.cap:
            raise ValueError(f"the request can hold up to {need} bytes of KV (prompt and max tokens), more than "
                             f"the KV cap of {self.cap} bytes: it could never be admitted")

    def add(self, req: Request) -> None:
        self.check(req)
        self.waiting.append(req)

    def remove(self, request_id: str) -> Request | None:
        for r in self.waiting:
            if r.id == request_id:
                self.waiting.remove(r)
                return r
        return None

    def admit(self, running: list[Cohort]) -> list[Request]:
        """Pop the waiting requests that fit now, oldest first; stop at the first that does not."""
        joins: dict[int, list[Request]] = {}  # running cohort index -> requests joining it
        groups: dict[tuple, list[Request]] = {}  # new cohorts by key
        open_cohort = {c.key: i for i, c in enumerate(running) if c.can_extend}
        total = sum(c.bound_bytes() for c in running)
        n_running = sum(len(c.reqs) for c in running)
        admitted: list[Request] = []
        while self.waiting:
            r = self.waiting[0]
            if self.max_running is not None and n_running + len(admitted) >= self.max_running:
                break
            i = open_cohort.get(r.cohort_key) if r.mergeable else None
            if i is not None:
                extra = joins.setdefault(i, [])
                before, after = running[i].bound_bytes(extra), running[i].bound_bytes([*extra, r])
            else:
                group = groups.setdefault(r.cohort_key, [])
                before, after = cohort_bytes([q.bound for q in group]), cohort_bytes([q.bound for q in (*group, r)])
            if self.cap is not None and total - before + after > self.cap:
                break
            total += after - before
            (joins[i] if i is not None else groups[r.cohort_key]).append(r)
            admitted.append(self.waiting.popleft())
        return admitted
