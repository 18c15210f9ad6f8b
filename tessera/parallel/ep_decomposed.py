"""Expert-parallel dispatch and combine as per-peer asynchronous messages ("decomposed").

The all-to-all of `ep_dispatch` is one collective: a rank can start on the rows it received only when
every peer's rows are there. Here the collective is cut into one non-blocking send and receive per
peer, posted at once in a circular order (rank r sends to r+1, r+2, ... and receives from r-1, r-2, ...,
so the ranks do not all target rank 0 first), and the receiver takes each source's rows as they land,
its own first. This is the "non-fused overlap" baseline of FLUX and TileLink, and what PyTorch's async
tensor parallelism does for all-gather (`_pipelined_all_gather_and_consume`), applied to the MoE
all-to-all; FasterMoE's per-peer pipelining (Tutel, arXiv 2206.03382, and FasterMoE, PPoPP'22) is the
same idea at the layer level.

    rows, weights, layout = dispatch(x, topk_ids, topk_weights, num_experts, group)   # same as ep_dispatch
    out = combine(rows, layout, group)
    out, layout = run_overlapped(x, topk_ids, topk_weights, num_experts, experts_fn, group)
    # ^ experts on each source's rows as they arrive, the results sent home at once

Counts still go first in one small all-to-all (the receive buffers need them). Every wait is bounded by
`timeout_s`. Empty messages are skipped on both sides (both know the counts).
"""

from __future__ import annotations

import datetime

import torch
import torch.distributed as dist

from tessera.distributed import parallel_state as ps
from tessera.kernels.moe.ep_layout import DispatchLayout, combine_at_home, make_layout, plan_sends

ROWS, WEIGHTS, BACK = 0, 1, 2  # message tags: one stream each, so a weight never matches a row receive
TIMEOUT_S = 60.0


class _Exchange:
    """One round of per-peer messages: `parts_out[p]` to peer p, `parts_in[p]` filled from peer p."""

    def __init__(self, parts_out: list[torch.Tensor], parts_in: list[torch.Tensor], group, tag: int,
                 copy_local: bool = True):
        self.group, self.me, self.W = ps.group_or_world(group), ps.rank(group), ps.world_size(group)
        self.recvs: dict[int, dist.Work] = {}
        self.sends: list[dist.Work] = []
        for step in range(1, self.W):  # receives first, in the order the peers send to us
            src = (self.me - step) % self.W
            if parts_in[src].numel():
                self.recvs[src] = dist.irecv(parts_in[src], src=ps.global_rank(group, src), group=self.group, tag=tag)
        for step in range(1, self.W):
            dst = (self.me + step) % self.W
            if parts_out[dst].numel():
                self.sends.append(dist.isend(parts_out[dst].contiguous(), dst=ps.global_rank(group, dst),
                                             group=self.group, tag=tag))
        if copy_local:
            parts_in[self.me].copy_(parts_out[self.me])

    def arrival_order(self) -> list[int]:
        """Sources in the order their rows are expected: this rank's own, then r-1, r-2, ..."""
        return [(self.me - step) % self.W for step in range(self.W)]

    def wait_from(self, src: int, timeout_s: float) -> None:
        work = self.recvs.pop(src, None)
        if work is not None:
            work.wait(datetime.timedelta(seconds=timeout_s))

    def finish(self, timeout_s: float) -> None:
        for src in list(self.recvs):
            self.wait_from(src, timeout_s)
        for work in self.sends:
            work.wait(datetime.timedelta(seconds=timeout_s))
        self.sends = []


def _plan(x, topk_ids, topk_weights, num_experts, group) -> DispatchLayout:
    plan = plan_sends(topk_ids, num_experts, ps.world_size(group))
    recv_matrix = torch.empty_like(plan.matrix)
    dist.all_to_all_single(recv_matrix, plan.matrix, group=ps.group_or_world(group))  # counts first
    weight = topk_weights.flatten()[plan.order]
    return make_layout(plan, weight, recv_matrix, x.shape[0], x.device)


def _split(t: torch.Tensor, counts: list[int]) -> list[torch.Tensor]:
    return list(t.split(counts))  # contiguous views along dim 0: safe receive buffers


def dispatch(x: torch.Tensor, topk_ids: torch.Tensor, topk_weights: torch.Tensor, num_experts: int, group=None,
             timeout_s: float = TIMEOUT_S) -> tuple[torch.Tensor, torch.Tensor, DispatchLayout]:
    """Same contract as `ep_dispatch.dispatch`: x [T, H], topk_ids / topk_weights [T, k] ->
    (rows [R, H] grouped by local expert then source rank, their weights [R], layout)."""
    layout = _plan(x, topk_ids, topk_weights, num_experts, group)
    R = sum(layout.recv_counts)
    rows, weights = x.new_empty(R, x.shape[1]), layout.weight.new_empty(R)
    sx = _Exchange(_split(x[layout.token], layout.send_counts), _split(rows, layout.recv_counts), group, ROWS)
    sw = _Exchange(_split(layout.weight, layout.send_counts), _split(weights, layout.recv_counts), group, WEIGHTS)
    sx.finish(timeout_s)
    sw.finish(timeout_s)
    return rows[layout.regroup], weights[layout.regroup], layout


def _home(back: torch.Tensor, layout: DispatchLayout) -> torch.Tensor:
    """back [S, H] the processed rows in send order -> [T, H], weighted and summed per token."""
    return combine_at_home(back, layout.token, layout.weight, layout.num_tokens)


def combine(rows: torch.Tensor, layout: DispatchLayout, group=None, timeout_s: float = TIMEOUT_S) -> torch.Tensor:
    """rows [R, H] in dispatch's order -> [T, H], as `ep_dispatch.combine`."""
    back = rows.new_empty(len(layout.token), rows.shape[1])
    ex = _Exchange(_split(layout.source_major(rows), layout.recv_counts), _split(back, layout.send_counts),
                   group, BACK)
    ex.finish(timeout_s)
    return _home(back, layout)


def run_overlapped(x: torch.Tensor, topk_ids: torch.Tensor, topk_weights: torch.Tensor, num_experts: int,
                   experts_fn, group=None, timeout_s: float = TIMEOUT_S,
                   timer=None) -> tuple[torch.Tensor, DispatchLayout]:
    """The routed experts of one MoE layer with dispatch, experts and combine overlapped per peer:
    `experts_fn(rows [n, H], offsets [E_local + 1]) -> [n, H]` runs on each source's rows (grouped by
    local expert, as the source sorted them) as soon as they are in, and the results go straight back
    while the next source's rows are processed. Returns ([T, H] weighted top-k sums, the layout). `timer`, if given,
    is a callable context-manager factory `timer(phase)` for "dispatch" / "experts" / "combine"."""
    from contextlib import nullcontext

    phase = timer or (lambda name: nullcontext())
    with phase("dispatch"):
        layout = _plan(x, topk_ids, topk_weights, num_experts, group)
        rows = x.new_empty(sum(layout.recv_counts), x.shape[1])
        back = x.new_empty(len(layout.token), x.shape[1])
        parts_in = _split(rows, layout.recv_counts)
        ex = _Exchange(_split(x[layout.token], layout.send_counts), parts_in, group, ROWS)
        returned = _split(back, layout.send_counts)
        home = _Exchange([p[:0] for p in parts_in], returned, group, BACK, copy_local=False)  # result receives
    done = [p[:0] for p in parts_in]  # results to send, filled per source
    sends: list[dist.Work] = []
    for src in ex.arrival_order():
        with phase("dispatch"):
            ex.wait_from(src, timeout_s)
        counts = layout.recv_matrix[src]
        offsets = torch.zeros(len(counts) + 1, dtype=torch.long)
        offsets[1:] = torch.cumsum(counts, 0)
        with phase("experts"):
            done[src] = experts_fn(parts_in[src], offsets)
        with phase("combine"):
            if src == ex.me:
                returned[src].copy_(done[src])
            elif done[src].numel():
                sends.append(dist.isend(done[src].contiguous(), dst=ps.global_rank(group, src),
                                        group=ex.group, tag=BACK))
    with phase("combine"):
        ex.finish(timeout_s)
        home.finish(timeout_s)
        for work in sends:
            work.wait(datetime.timedelta(seconds=timeout_s))
        return _home(back, layout), layout
