"""GEMM-ReduceScatter: out = reduce_scatter(A @ B, rows), partial tiles pushed to their owner as
soon as they are computed and reduced there.

A [M, K_loc] and B [K_loc, N] are this rank's K-slices (row-parallel linear); rank r owns rows
[r*M_loc, (r+1)*M_loc) of the sum. One launch per call:
- programs 0 .. W*T-1 compute partial tiles (T tiles per owner; a tile never straddles owners, the
  tile->rank map is `owner`), the next rank's tiles first and our own last (Triton-distributed
  `gemm_rs_threadblock_swizzle.py` rotates to `rank + 1` for the same reason: the earliest tiles
  travel while the rest compute); each tile is pushed into the owner's `partials[me]` in fp32 and
  its channel `sig[me, tile]` is set to the epoch;
- programs W*T .. W*T+T-1 reduce: each waits on exactly the W channels of its tile and sums the
  partials in rank order 0..W-1 (deterministic, equal on every run).
GEMM programs never wait and precede the reducers, so pid order cannot deadlock. TileLink's
GEMM+RS case (arXiv 2503.20313) and FLUX (arXiv 2406.06858) fuse the same dependency.
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
def _gemm_rs_kernel(a, b, out, partials, sig, err, epoch, M_loc, N, K,
                    s_am, s_ak, s_bk, s_bn, rank, world, bases, max_spins,
                    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
                    F32_DOT: tl.constexpr, VIRTUAL: tl.constexpr, FIX_RNE: tl.constexpr):
    pid = tl.program_id(0)
    me = dl.rank(rank, VIRTUAL)
    W = dl.num_ranks(world, VIRTUAL)
    partials = dl.localize(partials, rank, me, bases, VIRTUAL)  # [W, M_loc, N] fp32
    sig = dl.localize(sig, rank, me, bases, VIRTUAL)  # [W, T] epochs
    err = dl.localize(err, rank, me, bases, VIRTUAL)
    tn = tl.cdiv(N, BN)
    T = tl.cdiv(M_loc, BM) * tn
    if pid < W * T:  # partial tile for owner
        a = dl.localize(a, rank, me, bases, VIRTUAL)  # [M, K_loc]
        b = dl.localize(b, rank, me, bases, VIRTUAL)  # [K_loc, N]
        owner = (me + 1 + pid // T) % W
        tile = pid % T
        rows = (tile // tn) * BM + tl.arange(0, BM)  # rows within the owner's block
        cols = (tile % tn) * BN + tl.arange(0, BN)
        acc = gemm_tile(a + owner * M_loc * s_am, b, rows, cols, M_loc, N, K, s_am, s_ak, s_bk, s_bn,
                        BK, BM, BN, F32_DOT)
        mask = (rows[:, None] < M_loc) & (cols[None, :] < N)
        dst = partials + me * M_loc * N + rows[:, None] * N + cols[None, :]
        dl.tile_push_data(dst, acc, mask, owner, me, bases)
        dl.producer_tile_notify(sig, me * T + tile, owner, epoch, me, bases)
    else:  # reduce my tile over the W sources
        out = dl.localize(out, rank, me, bases, VIRTUAL)  # [M_loc, N]
        tile = pid - W * T
        rows = (tile // tn) * BM + tl.arange(0, BM)
        cols = (tile % tn) * BN + tl.arange(0, BN)
        mask = (rows[:, None] < M_loc) & (cols[None, :] < N)
        acc = tl.zeros((BM, BN), dtype=tl.float32)
        for src in range(W):
            token = dl.consumer_tile_wait(sig, src * T + tile, src * T + tile, epoch, max_spins, err)
            p = dl.consume_token(partials, token) + src * M_loc * N
            acc += tl.load(p + rows[:, None] * N + cols[None, :], mask=mask, other=0.0)
        tl.store(out + rows[:, None] * N + cols[None, :], round_to(acc, out.dtype.element_ty, FIX_RNE), mask=mask)


@dataclass
class GemmRSContext:
    heap: object
    m: int  # global rows M (divisible by W)
    n: int
    k: int  # this rank's K slice
    dtype: torch.dtype
    partials: torch.Tensor  # heap [W, M_loc, N] fp32
    sig: torch.Tensor  # heap [W, T] int64
    timeout_s: float | None
    max_spins: int
    tiles: tuple = (16, 16, 16)
    epoch: int = 0
    virtual_io: tuple | None = None  # heap (a, b, out) with virtual ranks


def create_gemm_rs_context(heap, m: int, n: int, k: int, dtype: torch.dtype,
                           timeout_s: float | None = None, tiles=(16, 16, 16)) -> GemmRSContext:
    """Collective. M must divide by the world size (each rank owns M/W rows of the result)."""
    W, (BM, BN, _) = heap.world, tiles
    args = {"m": m, "n": n, "k": k, "dtype": str(dtype), "tiles": tuple(tiles)}
    bad = None
    if min(m, n, k) <= 0:
        bad = f"sizes must be positive, got {args}"
    elif m % W:
        bad = f"gemm_rs: world size {W} does not divide the scattered dimension M={m}"
    if not heap.virtual:
        ps.check_consistent("create_gemm_rs_context", args, heap.group, bad)
    elif bad:
        raise ps.DistArgumentError(bad)
    m_loc = m // W
    T = triton.cdiv(m_loc, BM) * triton.cdiv(n, BN)
    ctx = GemmRSContext(heap, m, n, k, dtype,
                        heap.tensor((W, m_loc, n), torch.float32, "gemm_rs.partials"),
                        heap.tensor((W, T), torch.int64, "gemm_rs.sig"),
                        timeout_s, waits.spins_for(timeout_s, heap.device), tuple(tiles))
    if heap.virtual:
        ctx.virtual_io = (heap.tensor((m, k), dtype, "gemm_rs.a"), heap.tensor((k, n), dtype, "gemm_rs.b"),
                          heap.tensor((m_loc, n), dtype, "gemm_rs.out"))
    return ctx


def _launch(ctx: GemmRSContext, a, b, out) -> None:
    h, W = ctx.heap, ctx.heap.world
    check_matrix("gemm_rs A", a, (ctx.m, ctx.k), ctx.dtype, h.device)
    check_matrix("gemm_rs B", b, (ctx.k, ctx.n), ctx.dtype, h.device)
    BM, BN, BK = ctx.tiles
    m_loc = ctx.m // W
    T = triton.cdiv(m_loc, BM) * triton.cdiv(ctx.n, BN)
    _gemm_rs_kernel[launch_grid(W * T + T, h)](
        a, b, out, ctx.partials, ctx.sig, h.err, ctx.epoch, m_loc, ctx.n, ctx.k,
        a.stride(0), a.stride(1), b.stride(0), b.stride(1), h.rank, W, h.bases, ctx.max_spins,
        BM=BM, BN=BN, BK=BK, F32_DOT=f32_dot(ctx.dtype), VIRTUAL=h.virtual, FIX_RNE=waits.interpreted())
    waits.raise_on_wait_error(h, ctx.timeout_s, "gemm_rs")


def gemm_rs(a, b, ctx: GemmRSContext):
    """[M/W, N] = this rank's rows of sum_ranks a @ b; a [M, K_loc], b [K_loc, N] (strided ok).
    With virtual ranks, `a` and `b` are lists and a list of outputs is returned."""
    h = ctx.heap
    ctx.epoch += 1
    if h.virtual:
        va, vb, vo = ctx.virtual_io
        for r in range(h.world):
            h.peer(va, r).copy_(a[r])
            h.peer(vb, r).copy_(b[r])
        _launch(ctx, va, vb, vo)
        return [h.peer(vo, r).clone() for r in range(h.world)]
    err = local_error(lambda: check_matrix("gemm_rs A", a, (ctx.m, ctx.k), ctx.dtype, h.device),
                      lambda: check_matrix("gemm_rs B", b, (ctx.k, ctx.n), ctx.dtype, h.device))
    out = torch.empty(ctx.m // h.world, ctx.n, dtype=ctx.dtype, device=h.device)
    h.barrier(err, "gemm_rs")  # owners finished reading the previous call's partials; errors shared
    _launch(ctx, a, b, out)
    return out
