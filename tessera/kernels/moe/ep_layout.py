"""Host-side bookkeeping shared by every expert-parallel dispatch: which rows go where, and how received
rows are regrouped. Plain tensors, no communication.

With W ranks and E experts, rank r owns the E / W experts r E/W .. (r+1) E/W - 1, so sorting the
(token, slot) pairs by global expert id sorts them by destination rank, then by local expert.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class SendPlan:
    token: torch.Tensor  # [S] token of each row to send, destination-major then local expert
    order: torch.Tensor  # [S] index into the flattened [T k] pairs
    matrix: torch.Tensor  # [W, E_local] (CPU) rows for each destination rank and its local expert

    @property
    def counts(self) -> list[int]:  # rows to each rank
        return self.matrix.sum(1).tolist()


def experts_per_rank(num_experts: int, world: int) -> int:
    if num_experts % world:
        raise ValueError(f"expert parallelism: {num_experts} experts do not divide over {world} ranks")
    return num_experts // world


def plan_sends(topk_ids: torch.Tensor, num_experts: int, world: int) -> SendPlan:
    """topk_ids [T, k] (global expert ids, negative = dropped) -> what this rank sends to whom."""
    local = experts_per_rank(num_experts, world)
    flat = topk_ids.flatten()
    keep = flat >= 0
    order = torch.argsort(torch.where(keep, flat, num_experts), stable=True)[: int(keep.sum())]
    matrix = torch.bincount(flat[keep], minlength=num_experts).reshape(world, local).cpu()
    return SendPlan(order // topk_ids.shape[1], order, matrix)


def regroup_index(recv_matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """recv_matrix [W, E_local] rows received from each source per local expert, the rows stored
    source-major (each source's rows expert-major) -> (index [R]: the source-major row of each row in
    expert-major, source-minor order; offsets [E_local + 1]: local expert e owns rows offsets[e]:offsets[e+1])."""
    W, local = recv_matrix.shape
    flat = recv_matrix.flatten()
    starts = (torch.cumsum(flat, 0) - flat).tolist()
    counts = flat.tolist()
    pieces = [torch.arange(starts[s * local + e], starts[s * local + e] + counts[s * local + e])
              for e in range(local) for s in range(W)]
    index = torch.cat(pieces) if pieces else torch.zeros(0, dtype=torch.long)
    offsets = torch.zeros(local + 1, dtype=torch.long)
    offsets[1:] = torch.cumsum(recv_matrix.sum(0), 0)
    return index, offsets


@dataclass
class DispatchLayout:
    """What combine needs to send rows home, and what the experts need to find theirs (every dispatch
    implementation returns one)."""

    token: torch.Tensor  # [S] the token of each row this rank sent, in send order
    weight: torch.Tensor  # [S] its routing weight
    send_counts: list[int]  # rows sent to each rank
    recv_counts: list[int]  # rows received from each rank
    regroup: torch.Tensor  # [R] received row (source-major) of each row in expert-major order
    expert_offsets: torch.Tensor  # [E_local + 1] (CPU): local expert e owns rows offsets[e]:offsets[e + 1]
    recv_matrix: torch.Tensor  # [W, E_local] (CPU): rows received from each source rank per local expert
    num_tokens: int

    def source_major(self, rows: torch.Tensor) -> torch.Tensor:
        """rows [R, H] in dispatch's (expert-major) order -> the order they arrived in, source-major."""
        out = torch.empty_like(rows)
        out[self.regroup] = rows
        return out


def make_layout(plan: SendPlan, weight: torch.Tensor, recv_matrix: torch.Tensor, num_tokens: int,
                device) -> DispatchLayout:
    """The layout of one dispatch, once the counts this rank receives (`recv_matrix` [W, E_local]) are known."""
    regroup, offsets = regroup_index(recv_matrix)
    return DispatchLayout(plan.token, weight, plan.counts, recv_matrix.sum(1).tolist(), regroup.to(device),
                          offsets, recv_matrix, num_tokens)


def combine_at_home(back: torch.Tensor, token: torch.Tensor, weight: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """back [S, H] the processed rows in this rank's send order, token / weight [S] -> [T, H]: each token's
    rows weighted by their routing weights and summed (every expert-parallel combine ends here)."""
    out = back.new_zeros(num_tokens, back.shape[1])
    return out.index_add_(0, token, back * weight[:, None].to(back.dtype))
