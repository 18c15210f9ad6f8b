"""Batched expert calls on an M2N expert rank: the requests of every live attention rank for one round
become ONE `experts_fn` call (MegaScale-Infer, arXiv 2504.02263: an expert node runs one GEMM per
micro-batch over the tokens all attention nodes sent it, instead of one per attention node).

Each request's rows arrive grouped by local expert; the batch regroups them by local expert with the
requests in attention-rank order inside each expert's block, the offsets are recomputed, and the results
are split back to each request's own row order. Both M2N backends (`m2n.py`, `m2n_heap.py`) drive
`serve_rounds` with their own `take` (the next request of one attention rank) and `reply` (its results
back), so the regrouping exists once.

A round takes the next request of every live attention rank, in rank order. Every expert rank sees the
same requests from each attention rank, so the rounds are the same on every expert rank, and a round only
needs requests their senders post before waiting for this round's results: no deadlock. Requests of one
round for different layers (attention ranks with different numbers of micro-batches) get one call per
layer; ranks in lock step give one call per round.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch


class Request(NamedTuple):
    layer: int
    counts: torch.Tensor  # [EL] rows per local expert
    rows: torch.Tensor  # [n, H] grouped by local expert (a view of the backend's receive slot)


def offsets_of(counts: torch.Tensor) -> torch.Tensor:
    """[EL] rows per local expert -> [EL + 1] first row of each expert's block."""
    off = torch.zeros(len(counts) + 1, dtype=torch.long)
    off[1:] = torch.cumsum(counts, 0)
    return off


def regroup(counts: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """R requests' counts (each [EL]) -> the batch's offsets [EL + 1] and, per request, pos [n_r]: the batch
    row of each of its rows, in its own order (batch.index_copy_(0, pos, rows) gathers, out[pos] splits)."""
    C = torch.stack([c.to(torch.long) for c in counts])  # [R, EL]
    offsets = offsets_of(C.sum(0))
    block = offsets[:-1] + C.cumsum(0) - C  # [R, EL] batch row where request r's block of expert e starts
    own = C.cumsum(1) - C  # [R, EL] where that block starts in request r's own order
    pos = []
    for r in range(C.shape[0]):
        n = int(C[r].sum())
        shift = torch.repeat_interleave(block[r] - own[r], C[r], output_size=n)  # [n] per row: batch - own
        pos.append(shift + torch.arange(n))
    return offsets, pos


def answer(layer: int, reqs: list[tuple[int, Request]], experts_fn: Callable, reply: Callable) -> int:
    """One `experts_fn` call over the rows of `reqs` ((attention rank, request) pairs, all for `layer`), then
    `reply(rank, out, pos)` for each: its results are `out[pos]` (`pos` None: all of `out`). Returns the
    number of calls made (0 when there are no rows)."""
    if len(reqs) == 1:  # nothing to regroup: the experts read the receive slot itself
        a, q = reqs[0]
        if not len(q.rows):
            reply(a, q.rows, None)
            return 0
        reply(a, experts_fn(layer, q.rows, offsets_of(q.counts)).contiguous(), None)
        return 1
    offsets, pos = regroup([q.counts for _, q in reqs])
    total = int(offsets[-1])
    if total == 0:
        for a, q in reqs:
            reply(a, q.rows, None)
        return 0
    first = reqs[0][1].rows
    batch = first.new_empty(total, first.shape[-1])  # [sum n, H] grouped by local expert, then attention rank
    for (_, q), p in zip(reqs, pos):
        batch.index_copy_(0, p, q.rows)
    out = experts_fn(layer, batch, offsets)
    for (a, _), p in zip(reqs, pos):
        reply(a, out, p)
    return 1


def serve_rounds(attn: list[int], take: Callable, reply: Callable, experts_fn: Callable) -> tuple[int, int]:
    """Rounds until every attention rank stopped: `take(rank)` waits (bounded) for that rank's next request
    (None: it stopped); the round's requests are answered with one call per layer. Returns (requests
    served, experts_fn calls)."""
    live, served, calls = list(attn), 0, 0
    while live:
        reqs = []
        for a in list(live):
            q = take(a)
            if q is None:
                live.remove(a)
            else:
                reqs.append((a, q))
        for layer in dict.fromkeys(q.layer for _, q in reqs):  # first-seen order
            calls += answer(layer, [(a, q) for a, q in reqs if q.layer == layer], experts_fn, reply)
        served += len(reqs)
    return served, calls
