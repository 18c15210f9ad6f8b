"""Discrete-event simulator of MegaScale-Infer's ping-pong pipeline (arXiv 2504.02263, §4.1).

One decode step of the whole global batch: the batch is split into `m` micro-batches; for every layer
and micro-batch four tasks run in order,

    attention(i, l) -> send(i, l) [attention -> experts] -> experts(i, l) -> receive(i, l) [experts -> attention]

and attention(i, l + 1) needs receive(i, l). The attention side (all attention ranks, data parallel,
in lock step) and the expert side (all expert ranks) are one server each; the two links are servers
too (`links="serial"`: one transfer at a time per direction) or unlimited (`links="parallel"`). A
server serves, of the tasks that are ready, the one of the lowest (layer, micro-batch) first, and
never idles while one is ready. `send_overhead` charges the sender's compute side for issuing a
transfer (LogGP's `o`: on gloo `isend` blocks the caller; ~0 on GPUs with RDMA or NCCL).

The paper's closed form for the whole batch (its Eq. 5), with Tf = max(Ta, Te),

    T_total = (Ta + Te + 2 Tc) + Tf (m L - 1),

holds whenever the bottleneck side never waits, i.e. m Tf >= Ta + Te + 2 Tc, which the paper's
conditions (Tc < Tf, m >= 2 (1 + Tc / Tf)) imply. For any m the simulator gives

    T_total(m) = (Ta + Te + 2 Tc) + (L - 1) max(m Tf, Ta + Te + 2 Tc) + (m - 1) Tf    (`total_time`),

our generalisation (at m = 1 it is L (Ta + Te + 2 Tc): nothing overlaps). With Ta = Te the throughput
of a fixed micro-batch size stops growing linearly in m at the knee m = ceil(2 (1 + Tc / Tf))
(`knee`): from there on neither side idles.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field

KINDS = ("attention", "send", "experts", "receive")  # the per-(layer, micro-batch) chain, in order
RESOURCES = {"attention": "attention", "send": "link a->e", "experts": "experts", "receive": "link e->a"}


@dataclass(frozen=True)
class Event:
    kind: str  # one of KINDS
    layer: int
    micro: int
    resource: str
    start: float  # seconds from the step's start
    end: float


@dataclass
class SimResult:
    total: float  # seconds until the last micro-batch's last layer is back on the attention side
    events: list[Event] = field(default_factory=list)

    def busy(self, resource: str) -> float:
        return sum(e.end - e.start for e in self.events if e.resource == resource)

    def idle_between(self, resource: str) -> float:
        """Time `resource` waits between its first start and its last end (0: it never starved)."""
        ev = [e for e in self.events if e.resource == resource]
        return (max(e.end for e in ev) - min(e.start for e in ev)) - self.busy(resource) if ev else 0.0


def _check(ta: float, te: float, tc: float, m: int, layers: int) -> None:
    if m < 1 or layers < 1:
        raise ValueError(f"micro-batches and layers must be >= 1, got m={m}, layers={layers}")
    if min(ta, te, tc) < 0 or max(ta, te) <= 0:
        raise ValueError(f"times must be >= 0 and Ta or Te > 0, got Ta={ta}, Te={te}, Tc={tc}")


def simulate(ta: float, te: float, tc: float, m: int, layers: int, *, tc_back: float | None = None,
             links: str = "serial", send_overhead: float = 0.0) -> SimResult:
    """Event-by-event run of one decode step. ta / te: attention / expert time of one micro-batch in one
    layer; tc (tc_back): one transfer attention -> experts (experts -> attention)."""
    tc_back = tc if tc_back is None else tc_back
    _check(ta, te, max(tc, tc_back), m, layers)
    if links not in ("serial", "parallel"):
        raise ValueError(f"links must be 'serial' or 'parallel', got {links!r}")
    # the sender's compute side is busy for `send_overhead` after its compute task (its `isend` call)
    dur = {"attention": ta + send_overhead, "send": tc, "experts": te + send_overhead, "receive": tc_back}
    n_tasks = {}  # (kind, layer, micro) -> unmet dependencies
    for lyr in range(layers):
        for i in range(m):
            for k, kind in enumerate(KINDS):
                n_tasks[(kind, lyr, i)] = 0 if (k == 0 and lyr == 0) else 1
    ready: dict[str, list] = {r: [] for r in RESOURCES.values()}
    busy_until: dict[str, float] = {r: 0.0 for r in RESOURCES.values()}
    running: dict[str, int] = {r: 0 for r in RESOURCES.values()}
    capacity = {r: (math.inf if (links == "parallel" and r.startswith("link")) else 1) for r in RESOURCES.values()}
    completions: list = []  # heap of (end, seq, task)
    events: list[Event] = []
    for i in range(m):
        heapq.heappush(ready["attention"], (0, i, ("attention", 0, i)))
    now, seq = 0.0, 0
    eps = 1e-12 * (ta + te + tc + tc_back)  # ends this close are simultaneous (float sums of equal times)

    def start_ready():
        nonlocal seq
        for res, q in ready.items():
            while q and running[res] < capacity[res]:
                _, _, task = heapq.heappop(q)
                kind, lyr, i = task
                end = now + dur[kind]
                running[res] += 1
                busy_until[res] = max(busy_until[res], end)
                events.append(Event(kind, lyr, i, res, now, end))
                heapq.heappush(completions, (end, seq, task))
                seq += 1

    start_ready()
    while completions:
        now = completions[0][0]
        while completions and completions[0][0] <= now + eps:  # every task that ends now, then dispatch
            _, _, (kind, lyr, i) = heapq.heappop(completions)
            running[RESOURCES[kind]] -= 1
            k = KINDS.index(kind)
            nxt = (KINDS[k + 1], lyr, i) if k + 1 < len(KINDS) else ("attention", lyr + 1, i)
            if nxt[1] < layers:
                n_tasks[nxt] -= 1
                if n_tasks[nxt] == 0:
                    heapq.heappush(ready[RESOURCES[nxt[0]]], (nxt[1], nxt[2], nxt))
        start_ready()
    return SimResult(total=now, events=events)


def closed_form(ta: float, te: float, tc: float, m: int, layers: int) -> float:
    """The paper's Eq. 5 for the whole batch: exact when its conditions hold (`conditions_hold`)."""
    _check(ta, te, tc, m, layers)
    return (ta + te + 2 * tc) + max(ta, te) * (m * layers - 1)


def total_time(ta: float, te: float, tc: float, m: int, layers: int) -> float:
    """Our generalisation of Eq. 5 to every m (what `simulate` gives with links that never queue)."""
    _check(ta, te, tc, m, layers)
    tf, cycle = max(ta, te), ta + te + 2 * tc
    return cycle + (layers - 1) * max(m * tf, cycle) + (m - 1) * tf


def conditions_hold(ta: float, te: float, tc: float, m: int, rel_balance: float = 0.25) -> dict[str, bool]:
    """The paper's three conditions (its Eqs. 1-3), each by name; 'balanced' is Ta ~ Te within rel_balance."""
    tf = max(ta, te)
    return {"balanced": abs(ta - te) <= rel_balance * tf, "tc_below_tf": tc < tf,
            "enough_micro_batches": m >= 2 * (1 + tc / tf) - 1e-12}


def knee(ta: float, te: float, tc: float) -> int:
    """Fewest micro-batches from which the slower side never idles: ceil(2 (1 + Tc / Tf)) when Ta = Te,
    ceil((Ta + Te + 2 Tc) / Tf) in general."""
    tf = max(ta, te)
    return max(1, math.ceil((ta + te + 2 * tc) / tf - 1e-12))
