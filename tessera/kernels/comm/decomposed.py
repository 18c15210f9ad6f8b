"""Test- and benchmark-only (nothing in the package imports it; tests/test_layering.py checks): the two
baselines the fused ops are measured against, on plain torch.distributed:

- sequential: the collective, then the GEMM (no overlap);
- decomposed: the collective cut into chunks issued asynchronously, each chunk's GEMM run as soon
  as its data is there, local data first (PyTorch async-TP's `_pipelined_all_gather_and_consume`
  and the "non-fused overlap" baseline of FLUX / TileLink).

Same shapes and outputs as `ag_gemm.py` / `gemm_rs.py` / `allreduce.py` (gloo has no
reduce_scatter, so partials go point-to-point to their owner).
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from tessera.distributed import parallel_state as ps


def ag_gemm_sequential(a: torch.Tensor, b: torch.Tensor, group=None) -> torch.Tensor:
    """[W*M_loc, N] = all_gather(a [M_loc, K]) @ b [K, N]."""
    parts = [torch.empty_like(a) for _ in range(ps.world_size(group))]
    dist.all_gather(parts, a.contiguous(), group=ps.group_or_world(group))
    return torch.cat(parts) @ b


def ag_gemm_decomposed(a: torch.Tensor, b: torch.Tensor, group=None, chunks: int = 2) -> torch.Tensor:
    """Gather row chunks asynchronously; multiply the local shard first, then each chunk as it lands."""
    W, me, g = ps.world_size(group), ps.rank(group), ps.group_or_world(group)
    m = a.shape[0]
    out = torch.empty(W * m, b.shape[1], dtype=torch.result_type(a, b), device=a.device)
    pieces = list(a.contiguous().split(max(1, -(-m // chunks))))
    pending = []
    for p in pieces:
        bufs = [torch.empty_like(p) for _ in range(W)]
        pending.append((bufs, dist.all_gather(bufs, p, group=g, async_op=True)))
    torch.matmul(a, b, out=out[me * m:(me + 1) * m])  # local rows: no wait
    row = 0
    for bufs, work in pending:
        work.wait()
        rows = bufs[0].shape[0]
        for r in range(W):
            if r != me:
                torch.matmul(bufs[r], b, out=out[r * m + row: r * m + row + rows])
        row += rows
    return out


def _check_rows(m: int, W: int):
    if m % W:
        raise ps.DistArgumentError(f"gemm_rs: world size {W} does not divide the scattered dimension M={m}")


def gemm_rs_sequential(a: torch.Tensor, b: torch.Tensor, group=None) -> torch.Tensor:
    """This rank's [M/W, N] block of sum_ranks a @ b (all-reduce, keep my rows)."""
    W, me = ps.world_size(group), ps.rank(group)
    _check_rows(a.shape[0], W)
    c = a @ b
    dist.all_reduce(c, group=ps.group_or_world(group))
    return c.chunk(W)[me].clone()


def gemm_rs_decomposed(a: torch.Tensor, b: torch.Tensor, group=None) -> torch.Tensor:
    """Compute the block for the next rank first and send it while computing the others; the owner
    sums the W partials in rank order (fp32). Point-to-point, because collectives must be issued
    in the same order on every rank, which would forbid the rotation."""
    W, me, g = ps.world_size(group), ps.rank(group), ps.group_or_world(group)
    _check_rows(a.shape[0], W)
    blocks = a.chunk(W)  # W x [M/W, K]
    parts = [torch.empty(blocks[me].shape[0], b.shape[1], dtype=torch.result_type(a, b)) for _ in range(W)]
    works = [dist.irecv(parts[src], src=ps.global_rank(group, src), group=g) for src in range(W) if src != me]
    for i in range(1, W + 1):
        owner = (me + i) % W
        if owner == me:
            torch.matmul(blocks[me], b, out=parts[me])
        else:
            works.append(dist.isend(blocks[owner] @ b, dst=ps.global_rank(group, owner), group=g))
    for w in works:
        w.wait()
    total = torch.zeros(parts[me].shape, dtype=torch.float32)
    for p in parts:
        total += p
    return total.to(parts[me].dtype)


def allreduce_sequential(x: torch.Tensor, group=None) -> torch.Tensor:
    y = x.clone()
    dist.all_reduce(y, group=ps.group_or_world(group))
    return y


def allreduce_decomposed(x: torch.Tensor, group=None, chunks: int = 4) -> torch.Tensor:
    """Chunked async all-reduce: the pieces travel concurrently (lets a caller start consuming)."""
    y = x.clone().reshape(-1)
    works = [dist.all_reduce(p, group=ps.group_or_world(group), async_op=True)
             for p in y.split(max(1, -(-y.numel() // chunks)))]
    for w in works:
        w.wait()
    return y.view(x.shape)
