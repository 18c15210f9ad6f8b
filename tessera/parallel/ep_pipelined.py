"""Coarse-grained pipelining of an expert-parallel MoE layer, as in Tutel (arXiv 2206.03382) and FasterMoE
(PPoPP'22): the layer's tokens are cut into chunks, and chunk c+1's dispatch all-to-all is in flight
(an asynchronous `torch.distributed` collective) while chunk c's experts run; each chunk's combine is
issued as soon as its experts are done. COMET (arXiv 2502.19811) compares against exactly this baseline:
the overlap is per chunk, so the first dispatch and the last combine stay exposed and small chunks make
the GEMMs less efficient.

    out, layouts = run_pipelined(x, topk_ids, topk_weights, num_experts, experts_fn, group, chunks=2)

Every rank issues the same collectives in the same order (per chunk: counts, then rows; later the
results), whatever its token count (a rank with no tokens in a chunk sends zero rows).
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.distributed as dist

from tessera.distributed import parallel_state as ps
from tessera.kernels.moe.ep_layout import combine_at_home, make_layout, plan_sends

CHUNKS = 2


def _start_dispatch(x, ids, weights, num_experts, group):
    """Counts (blocking: the row buffers need them), then the rows asynchronously -> (layout, rows, work)."""
    g = ps.group_or_world(group)
    plan = plan_sends(ids, num_experts, ps.world_size(group))
    recv_matrix = torch.empty_like(plan.matrix)
    dist.all_to_all_single(recv_matrix, plan.matrix, group=g)
    layout = make_layout(plan, weights.flatten()[plan.order], recv_matrix, x.shape[0], x.device)
    rows = x.new_empty(sum(layout.recv_counts), x.shape[1])  # source-major
    work = dist.all_to_all_single(rows, x[plan.token], layout.recv_counts, layout.send_counts, group=g,
                                  async_op=True)
    return layout, rows, work


def run_pipelined(x: torch.Tensor, topk_ids: torch.Tensor, topk_weights: torch.Tensor, num_experts: int,
                  experts_fn, group=None, chunks: int = CHUNKS, timer=None):
    """x [T, H], topk_ids / topk_weights [T, k] -> ([T, H] weighted top-k sums, the chunks' layouts).
    `experts_fn(rows [n, H] grouped by local expert, offsets [EL + 1]) -> [n, H]`."""
    phase = timer or (lambda name: nullcontext())
    g = ps.group_or_world(group)
    T = x.shape[0]
    bounds = [T * c // chunks for c in range(chunks + 1)]
    parts = [slice(bounds[c], bounds[c + 1]) for c in range(chunks)]
    out = x.new_zeros(T, x.shape[1])
    with phase("dispatch"):
        inflight = _start_dispatch(x[parts[0]], topk_ids[parts[0]], topk_weights[parts[0]], num_experts, group)
    combines, layouts = [], []
    for c in range(chunks):
        layout, rows, work = inflight
        with phase("dispatch"):
            if c + 1 < chunks:  # the next chunk's rows travel while this chunk's experts run
                p = parts[c + 1]
                inflight = _start_dispatch(x[p], topk_ids[p], topk_weights[p], num_experts, group)
            work.wait()
        with phase("experts"):
            y = experts_fn(rows[layout.regroup], layout.expert_offsets)
        with phase("combine"):
            back = y.new_empty(len(layout.token), y.shape[1])
            combines.append((back, layout, dist.all_to_all_single(
                back, layout.source_major(y), layout.send_counts, layout.recv_counts, group=g, async_op=True)))
        layouts.append(layout)
    with phase("combine"):
        for (back, layout, work), p in zip(combines, parts):
            work.wait()
            out[p] = combine_at_home(back, layout.token, layout.weight, layout.num_tokens)
    return out, layouts
