"""Single-process torch references for the distributed ops: every kernel is tested against these.

Each takes every rank's inputs as a list and returns every rank's expected output, computed in
fp32 in a fixed rank order, so that ops whose reduction order is the same can be compared exactly.
"""

from __future__ import annotations

import torch


def ag_gemm_ref(a_shards: list[torch.Tensor], b: torch.Tensor) -> torch.Tensor:
    """all_gather(a, rows) @ b: [W*M_loc, K] @ [K, N] -> [W*M_loc, N] in b's dtype."""
    return (torch.cat(a_shards).float() @ b.float()).to(b.dtype)


def gemm_rs_ref(a_parts: list[torch.Tensor], b_parts: list[torch.Tensor]) -> list[torch.Tensor]:
    """reduce_scatter(a_r @ b_r, rows): rank r gets rows [r*M/W, (r+1)*M/W) of sum_r a_r @ b_r,
    partials in fp32 summed in rank order 0..W-1."""
    W = len(a_parts)
    total = torch.zeros(a_parts[0].shape[0], b_parts[0].shape[1])
    for a, b in zip(a_parts, b_parts):
        total = total + a.float() @ b.float()
    return [s.to(a_parts[0].dtype) for s in total.chunk(W)]


def allreduce_ref(xs: list[torch.Tensor]) -> torch.Tensor:
    """sum_r x_r in rank order 0..W-1, accumulated in fp32, cast back."""
    total = torch.zeros_like(xs[0], dtype=torch.float32)
    for x in xs:
        total = total + x.float()
    return total.to(xs[0].dtype)
