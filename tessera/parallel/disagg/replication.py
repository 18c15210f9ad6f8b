"""Hot-expert replication: give the most loaded experts extra replicas and place all replicas on expert
ranks so that the most loaded rank carries as little as possible (greedy min-max).

MegaScale-Infer (arXiv 2504.02263, §4) replicates hot experts on the expert nodes with a greedy
min-max algorithm; FasterMoE's "dynamic shadowing" (PPoPP'22) and DeepSeek's EPLB replicate popular
experts for the same reason. The algorithm here, from the measured tokens per expert:

1. Replicas: every expert has one; each spare slot goes to the expert whose load per replica is the
   largest at that moment (a replica takes an equal share of its expert's tokens).
2. Placement: replicas in decreasing load, each to the least-loaded rank that has a free slot and no
   replica of the same expert yet (LPT scheduling, Graham 1969: within 4/3 of the optimal makespan);
   if the contiguous placement without replicas is better still, that one.

Balancedness is mean / max tokens per rank (vLLM's EPLB log and SGLang report the same ratio): 1.0 is
even, 1 / ranks is everything on one rank.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass


@dataclass(frozen=True)
class Placement:
    ranks: list[list[int]]  # rank -> expert ids it holds (one id per replica)
    rank_load: list[float]  # rank -> tokens it serves, each expert's tokens split evenly over its replicas
    replicas: list[int]  # expert -> replica count

    @property
    def balancedness(self) -> float:
        return balancedness(self.rank_load)


def balancedness(rank_load: list[float]) -> float:
    top = max(rank_load)
    return (sum(rank_load) / len(rank_load)) / top if top > 0 else 1.0


def _check(loads: list[float], n_ranks: int, slots_per_rank: int) -> None:
    if n_ranks < 1 or slots_per_rank < 1:
        raise ValueError(f"ranks and slots per rank must be >= 1, got {n_ranks} ranks, {slots_per_rank} slots")
    if any(x < 0 for x in loads):
        raise ValueError("expert loads must be >= 0")
    if len(loads) > n_ranks * slots_per_rank:
        raise ValueError(f"{len(loads)} experts do not fit in {n_ranks} ranks x {slots_per_rank} slots")


def contiguous(loads: list[float], n_ranks: int) -> Placement:
    """No replication: rank r holds experts r E/W .. (r+1) E/W - 1 (what expert parallelism does today)."""
    E = len(loads)
    if n_ranks < 1 or E % n_ranks:
        raise ValueError(f"{E} experts do not divide over {n_ranks} ranks")
    per = E // n_ranks
    ranks = [list(range(r * per, (r + 1) * per)) for r in range(n_ranks)]
    return Placement(ranks, [float(sum(loads[e] for e in rk)) for rk in ranks], [1] * E)


def replicate(loads: list[float], n_ranks: int, slots_per_rank: int) -> Placement:
    """Fill n_ranks x slots_per_rank replica slots from per-expert loads [E] (greedy min-max)."""
    _check(loads, n_ranks, slots_per_rank)
    E = len(loads)
    replicas = [1] * E
    # a replica can only go to a rank without one of the same expert: at most n_ranks replicas each
    heap = [(-loads[e], e) for e in range(E)]  # by load per replica, largest first
    heapq.heapify(heap)
    for _ in range(n_ranks * slots_per_rank - E):
        while heap and replicas[heap[0][1]] >= n_ranks:
            heapq.heappop(heap)
        if not heap:
            break
        _, e = heapq.heappop(heap)
        replicas[e] += 1
        heapq.heappush(heap, (-loads[e] / replicas[e], e))
    items = sorted(((loads[e] / replicas[e], e) for e in range(E) for _ in range(replicas[e])), key=lambda t: (-t[0], t[1]))
    ranks: list[list[int]] = [[] for _ in range(n_ranks)]
    rank_load = [0.0] * n_ranks
    for share, e in items:
        free = [r for r in range(n_ranks) if len(ranks[r]) < slots_per_rank and e not in ranks[r]]
        # LPT with the slot limit: the least-loaded rank first, then the emptiest, so a rank does not run
        # out of slots while the experts placed last still need distinct ranks
        r = min(free, key=lambda r: (rank_load[r], len(ranks[r]), r))
        ranks[r].append(e)
        rank_load[r] += share
    greedy = Placement(ranks, rank_load, replicas)
    if E % n_ranks == 0 and E // n_ranks <= slots_per_rank:  # LPT is not optimal: never lose to no replication
        plain = contiguous(loads, n_ranks)
        if max(plain.rank_load) < max(greedy.rank_load):
            return plain
    return greedy
