"""Expert-parallel token dispatch and combine over torch.distributed (`all_to_all_single`).

    rows, weights, layout = dispatch(x, topk_ids, topk_weights, num_experts, group)
    y = experts(rows)                                   # rows grouped by local expert, then source rank
    out = combine(y, layout)                            # [T, H]: sum over each token's top-k, weighted

With W ranks and E experts, rank r owns experts r*E/W .. (r+1)*E/W - 1. Dispatch sends each (token, slot)
pair to the rank owning its expert: counts first ([W, E/W] per rank, one all-to-all), rows and weights
second. Received rows arrive grouped by source rank; they are regrouped by local expert (then source rank,
the order Triton-distributed's `EPAll2AllLayer` and DeepEP's low-latency layout use), so a grouped GEMM
reads each expert's rows contiguously. A slot whose expert id is negative sends nothing. Combine reverses
both permutations with one more all-to-all and applies the routing weights at home, so identity experts
give back x * sum(weights). This is the reference and the CPU path; overlapped and fused variants
(chunked sends, the symmetric heap) implement the same interface.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from tessera.distributed import parallel_state as ps
from tessera.kernels.moe.ep_layout import DispatchLayout, combine_at_home, make_layout, plan_sends


def dispatch(x: torch.Tensor, topk_ids: torch.Tensor, topk_weights: torch.Tensor, num_experts: int,
             group=None) -> tuple[torch.Tensor, torch.Tensor, DispatchLayout]:
    """x [T, H], topk_ids / topk_weights [T, k] (global expert ids, -1 = dropped) ->
    (rows [R, H] grouped by local expert then source rank, their weights [R], layout)."""
    plan = plan_sends(topk_ids, num_experts, ps.world_size(group))
    recv_matrix = torch.empty_like(plan.matrix)
    dist.all_to_all_single(recv_matrix, plan.matrix, group=group)  # counts first: sizes for the rows
    weight = topk_weights.flatten()[plan.order]
    layout = make_layout(plan, weight, recv_matrix, x.shape[0], x.device)
    rows = x.new_empty(sum(layout.recv_counts), x.shape[1])
    weights = weight.new_empty(sum(layout.recv_counts))
    dist.all_to_all_single(rows, x[plan.token], layout.recv_counts, layout.send_counts, group=group)
    dist.all_to_all_single(weights, weight, layout.recv_counts, layout.send_counts, group=group)
    return rows[layout.regroup], weights[layout.regroup], layout


def combine(rows: torch.Tensor, layout: DispatchLayout, group=None) -> torch.Tensor:
    """rows [R, H] in dispatch's output order -> [T, H]: each token's rows, weighted and summed at home."""
    back = rows.new_empty(len(layout.token), rows.shape[1])
    dist.all_to_all_single(back, layout.source_major(rows), layout.send_counts, layout.recv_counts, group=group)
    return combine_at_home(back, layout.token, layout.weight, layout.num_tokens)
