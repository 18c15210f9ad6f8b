"""AllGather-GEMM: C = all_gather(A, rows) @ B, the gather overlapped with the GEMM tiles.

A is sharded by rows ([M_loc, K] per rank), B is the rank's own [K, N] (e.g. a column shard of a
weight), C is [W * M_loc, N]. One launch per call:
- programs 0 .. W-2 are producers: each pushes this rank's shard into one peer's `a_full` and
  notifies the peer's `ready[me]` with the call's epoch (TileLink `tile_push_data` +
  `producer_tile_notify`);
- the remaining programs are GEMM tiles, visited local-rows-first (`swizzle_local_first`); a tile
  waits only on the ranks its rows come from (`tile_rank_range` + `consumer_tile_wait`).
Producers never wait and precede consumers, so the interpreter (programs in pid order) cannot
deadlock. Design after Triton-distributed `kernels/nvidia/allgather_gemm.py` and tutorial 07
(arXiv 2504.19442) and TileLink's AG+GEMM case (arXiv 2503.20313); code written from scratch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from tessera.distributed import lang as dl
from tessera.distributed import parallel_state as ps
from tessera.distributed import waits
from tessera.kernels.comm.tile import check_matrix, f32_dot, gemm_tile, launch_grid, local_error, round_to


@triton.jit
def _ag_gemm_kernel(a_full, b, c, ready, err, epoch, M_loc, N, K,
                    s_bk, s_bn, s_cm, s_cn, rank, world, bases, max_spins,
                    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, PUSH: tl.constexpr,
                    F32_DOT: tl.constexpr, VIRTUAL: tl.constexpr, FIX_RNE: tl.constexpr):
    pid = tl.program_id(0)
    me = dl.rank(rank, VIRTUAL)
    W = dl.num_ranks(world, VIRTUAL)
    a_full = dl.localize(a_full, rank, me, bases, VIRTUAL)  # [W * M_loc, K]
    ready = dl.localize(ready, rank, me, bases, VIRTUAL)  # [W] epochs, one per source rank
    err = dl.localize(err, rank, me, bases, VIRTUAL)
    if pid < W - 1:  # producer: my rows -> the same rows of one peer
        peer = (me + 1 + pid) % W
        mine = a_full + me * M_loc * K
        n = M_loc * K
        for off in range(0, n, PUSH):
            offs = off + tl.arange(0, PUSH)
            dl.tile_push_data(mine + offs, tl.load(mine + offs, mask=offs < n), offs < n, peer, me, bases)
        dl.producer_tile_notify(ready, me, peer, epoch, me, bases)
    else:
        b = dl.localize(b, rank, me, bases, VIRTUAL)  # [K, N]
        c = dl.localize(c, rank, me, bases, VIRTUAL)  # [W * M_loc, N]
        M = W * M_loc
        num_pid_n = tl.cdiv(N, BN)
        t = pid - (W - 1)
        pid_m = dl.swizzle_local_first(t // num_pid_n, me, M_loc, BM, tl.cdiv(M, BM))
        pid_n = t % num_pid_n
        lo, hi = dl.tile_rank_range(pid_m * BM, BM, M_loc, M)
        token = dl.consumer_tile_wait(ready, lo, hi, epoch, max_spins, err)
        a = dl.consume_token(a_full, token)
        offs_m = pid_m * BM + tl.arange(0, BM)
        offs_n = pid_n * BN + tl.arange(0, BN)
        acc = gemm_tile(a, b, offs_m, offs_n, M, N, K, K, 1, s_bk, s_bn, BK, BM, BN, F32_DOT)
        mask = (offs_m[:, None] < M) & (offs_n[None, :] < N)
        tl.store(c + offs_m[:, None] * s_cm + offs_n[None, :] * s_cn, round_to(acc, c.dtype.element_ty, FIX_RNE), mask=mask)


@dataclass
class AGGemmContext:
    """Owns the symmetric buffers of one AG-GEMM shape; `epoch` counts calls (no signal resets)."""

    heap: object
    m_per_rank: int
    n: int
    k: int
    dtype: torch.dtype
    a_full: torch.Tensor  # heap [W * M_loc, K]
    ready: torch.Tensor  # heap [W] int64
    timeout_s: float | None
    max_spins: int
    tiles: tuple = (16, 16, 16)  # BM, BN, BK
    epoch: int = 0
    b_virtual: torch.Tensor | None = None  # heap copies of B and C with virtual ranks
    c_virtual: torch.Tensor | None = None


def create_ag_gemm_context(heap, m_per_rank: int, n: int, k: int, dtype: torch.dtype,
                           timeout_s: float | None = None, tiles=(16, 16, 16)) -> AGGemmContext:
    """Collective: allocates `a_full` and `ready` on every rank (errors raised on every rank)."""
    W = heap.world
    args = {"m_per_rank": m_per_rank, "n": n, "k": k, "dtype": str(dtype), "tiles": tuple(tiles)}
    bad = None if min(m_per_rank, n, k) > 0 else f"sizes must be positive, got {args}"
    if not heap.virtual:
        ps.check_consistent("create_ag_gemm_context", args, heap.group, bad)
    elif bad:
        raise ps.DistArgumentError(bad)
    ctx = AGGemmContext(heap, m_per_rank, n, k, dtype,
                        heap.tensor((W * m_per_rank, k), dtype, "ag_gemm.a_full"),
                        heap.tensor((W,), torch.int64, "ag_gemm.ready"),
                        timeout_s, waits.spins_for(timeout_s, heap.device), tuple(tiles))
    if heap.virtual:
        ctx.b_virtual = heap.tensor((k, n), dtype, "ag_gemm.b")
        ctx.c_virtual = heap.tensor((W * m_per_rank, n), dtype, "ag_gemm.c")
    return ctx


def _launch(ctx: AGGemmContext, b: torch.Tensor, c: torch.Tensor, check_waits: bool = True) -> None:
    """Checked host wrapper: one launch of the fused kernel for the current epoch.
    `check_waits=False` skips reading the error slot (a device sync; benchmarks only)."""
    h = ctx.heap
    check_matrix("ag_gemm B", b, (ctx.k, ctx.n), ctx.dtype, h.device)
    check_matrix("ag_gemm C", c, (h.world * ctx.m_per_rank, ctx.n), ctx.dtype, h.device)
    BM, BN, BK = ctx.tiles
    n_tiles = triton.cdiv(h.world * ctx.m_per_rank, BM) * triton.cdiv(ctx.n, BN)
    _ag_gemm_kernel[launch_grid(h.world - 1 + n_tiles, h)](
        ctx.a_full, b, c, ctx.ready, h.err, ctx.epoch, ctx.m_per_rank, ctx.n, ctx.k,
        b.stride(0), b.stride(1), c.stride(0), c.stride(1), h.rank, h.world, h.bases, ctx.max_spins,
        BM=BM, BN=BN, BK=BK, PUSH=BM * BK, F32_DOT=f32_dot(ctx.dtype), VIRTUAL=h.virtual, FIX_RNE=waits.interpreted())
    if check_waits:
        waits.raise_on_wait_error(h, ctx.timeout_s, "ag_gemm")


def ag_gemm(a, b, ctx: AGGemmContext):
    """C [W*M_loc, N] = all_gather(a) @ b. `a` [M_loc, K] is this rank's shard, `b` [K, N] may be
    a strided view (e.g. `weight.t()`). With virtual ranks, `a` and `b` are lists (one per rank)
    and a list of C is returned."""
    h = ctx.heap
    ctx.epoch += 1
    m, rows = ctx.m_per_rank, slice(h.rank * ctx.m_per_rank, (h.rank + 1) * ctx.m_per_rank)
    if h.virtual:
        for r in range(h.world):
            check_matrix("ag_gemm A", a[r], (m, ctx.k), ctx.dtype, h.device)
            h.peer(ctx.a_full, r)[r * m:(r + 1) * m].copy_(a[r])
            h.peer(ctx.ready, r)[r] = ctx.epoch  # own rows need no wait
            h.peer(ctx.b_virtual, r).copy_(b[r])
        _launch(ctx, ctx.b_virtual, ctx.c_virtual)
        return [h.peer(ctx.c_virtual, r).clone() for r in range(h.world)]
    err = local_error(lambda: check_matrix("ag_gemm A", a, (m, ctx.k), ctx.dtype, h.device),
                      lambda: check_matrix("ag_gemm B", b, (ctx.k, ctx.n), ctx.dtype, h.device))
    if err is None:
        ctx.a_full[rows].copy_(a)
        ctx.ready[h.rank] = ctx.epoch
    c = torch.empty(h.world * m, ctx.n, dtype=ctx.dtype, device=h.device)
    # every peer finished reading the previous call's a_full before anyone overwrites it, and a
    # bad argument on any rank raises on all of them
    h.barrier(err, "ag_gemm")
    _launch(ctx, b, c)
    return c
