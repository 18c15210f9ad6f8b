"""AllReduce over the symmetric heap, one-shot and two-shot (Triton-distributed
`kernels/nvidia/allreduce.py` names the same two variants; arXiv 2504.19442 §5).

x [n] is cut into C chunks of BLOCK elements. One launch per call, in phases by program id:
- one-shot: phase A (C programs) puts chunk c of `stage[me]` into every rank's `stage[me]` and
  notifies `sig1[me, c]` there; phase B (C programs) waits on the W channels of chunk c and sums
  them in rank order 0..W-1 into `out`. W-1 remote writes per element, one step of latency.
- two-shot: chunk c belongs to rank c % W. Phase A puts it only to its owner; phase B (owner only)
  reduces it in rank order, stores it in its `out` and puts it into every peer's `out`, notifying
  `sig2[c]`; phase C (non-owners) waits on `sig2[c]`. 2(W-1)/W remote writes per element.
Every wait targets an earlier phase (lower program id) or another rank, so pid order is safe.
Summation is in fp32 in rank order, so the result is identical on every rank and run.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from tessera.distributed import lang as dl
from tessera.distributed import parallel_state as ps
from tessera.distributed import waits
from tessera.kernels.comm.tile import launch_grid, round_to


@triton.jit
def _reduce_chunk(stage, sig1, c, n, n_cap, epoch, max_spins, err, W, BLOCK: tl.constexpr):
    """Sum chunk c of stage[0..W-1] in rank order, each source after its own signal."""
    offs = c * BLOCK + tl.arange(0, BLOCK)
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    for src in range(W):
        ch = src * tl.cdiv(n_cap, BLOCK) + c
        token = dl.consumer_tile_wait(sig1, ch, ch, epoch, max_spins, err)
        acc += tl.load(dl.consume_token(stage, token) + src * n_cap + offs, mask=offs < n, other=0.0).to(tl.float32)
    return acc


@triton.jit
def _allreduce_kernel(stage, out, sig1, sig2, err, epoch, n, n_cap, rank, world, bases, max_spins,
                      BLOCK: tl.constexpr, TWO_SHOT: tl.constexpr, VIRTUAL: tl.constexpr, FIX_RNE: tl.constexpr):
    pid = tl.program_id(0)
    me = dl.rank(rank, VIRTUAL)
    W = dl.num_ranks(world, VIRTUAL)
    stage = dl.localize(stage, rank, me, bases, VIRTUAL)  # [W, n_cap], first n used
    out = dl.localize(out, rank, me, bases, VIRTUAL)  # [n_cap]
    sig1 = dl.localize(sig1, rank, me, bases, VIRTUAL)  # [W, C_cap]
    sig2 = dl.localize(sig2, rank, me, bases, VIRTUAL)  # [C_cap]
    err = dl.localize(err, rank, me, bases, VIRTUAL)
    C = tl.cdiv(n, BLOCK)
    c = pid % C
    offs = c * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    mine = stage + me * n_cap
    C_cap = tl.cdiv(n_cap, BLOCK)
    if pid < C:  # phase A: scatter my chunk (to everyone, or to its owner)
        if TWO_SHOT:
            dl.put_signal(mine, mine, offs, mask, sig1 + me * C_cap + c, epoch, c % W, me, bases)
        else:
            for i in range(W):
                peer = (me + i) % W
                dl.put_signal(mine, mine, offs, mask, sig1 + me * C_cap + c, epoch, peer, me, bases)
    elif pid < 2 * C:  # phase B: reduce
        if TWO_SHOT:
            if c % W == me:
                acc = _reduce_chunk(stage, sig1, c, n, n_cap, epoch, max_spins, err, W, BLOCK)
                tl.store(out + offs, round_to(acc, out.dtype.element_ty, FIX_RNE), mask=mask)
                for i in range(1, W):
                    dl.put_signal(out, out, offs, mask, sig2 + c, epoch, (me + i) % W, me, bases)
        else:
            acc = _reduce_chunk(stage, sig1, c, n, n_cap, epoch, max_spins, err, W, BLOCK)
            tl.store(out + offs, round_to(acc, out.dtype.element_ty, FIX_RNE), mask=mask)
    else:  # phase C (two-shot): wait for the owner's reduced chunk
        if c % W != me:
            dl.wait(sig2 + c, epoch, max_spins, err)


@dataclass
class AllReduceContext:
    heap: object
    n: int  # capacity in elements; a call may reduce any numel <= n
    dtype: torch.dtype
    two_shot: bool
    stage: torch.Tensor  # heap [W, n]
    out: torch.Tensor  # heap [n]
    sig1: torch.Tensor  # heap [W, C] int64
    sig2: torch.Tensor  # heap [C] int64
    timeout_s: float | None
    max_spins: int
    block: int = 64
    epoch: int = 0


def create_allreduce_context(heap, n: int, dtype: torch.dtype, two_shot: bool = False,
                             timeout_s: float | None = None, block: int = 64) -> AllReduceContext:
    """Collective; up to n elements per call (any count: the last chunk is masked)."""
    W = heap.world
    args = {"n": n, "dtype": str(dtype), "two_shot": two_shot, "block": block}
    bad = None if n > 0 and block & (block - 1) == 0 else f"need n > 0 and a power-of-two block: {args}"
    if not heap.virtual:
        ps.check_consistent("create_allreduce_context", args, heap.group, bad)
    elif bad:
        raise ps.DistArgumentError(bad)
    C = triton.cdiv(n, block)
    return AllReduceContext(heap, n, dtype, two_shot,
                            heap.tensor((W, n), dtype, "allreduce.stage"), heap.tensor((n,), dtype, "allreduce.out"),
                            heap.tensor((W, C), torch.int64, "allreduce.sig1"),
                            heap.tensor((C,), torch.int64, "allreduce.sig2"),
                            timeout_s, waits.spins_for(timeout_s, heap.device), block)


def _launch(ctx: AllReduceContext, n: int) -> None:
    h = ctx.heap
    C = triton.cdiv(n, ctx.block)
    _allreduce_kernel[launch_grid((3 if ctx.two_shot else 2) * C, h)](
        ctx.stage, ctx.out, ctx.sig1, ctx.sig2, h.err, ctx.epoch, n, ctx.n, h.rank, h.world, h.bases,
        ctx.max_spins, BLOCK=ctx.block, TWO_SHOT=ctx.two_shot, VIRTUAL=h.virtual, FIX_RNE=waits.interpreted())
    waits.raise_on_wait_error(h, ctx.timeout_s, "allreduce")


def allreduce(x, ctx: AllReduceContext):
    """Sum of x over ranks, same shape as x; every rank passes the same numel (<= ctx.n), as for
    any collective. With virtual ranks, x is a list (one tensor per rank)."""
    h = ctx.heap
    xs = x if h.virtual else [x]
    n, err = xs[0].numel(), None
    for r, xr in enumerate(xs):
        if xr.numel() != n or n > ctx.n or xr.dtype != ctx.dtype:
            err = (f"allreduce: expected at most {ctx.n} elements of {ctx.dtype} (the same on every rank), "
                   f"got {tuple(xr.shape)} {xr.dtype}")
            break
        rr = r if h.virtual else h.rank
        h.peer(ctx.stage, rr)[rr, :n].copy_(xr.reshape(-1))
    ctx.epoch += 1
    # peers are done with the previous call's stage/out; errors and the element count (it sizes
    # every rank's grid) are agreed on in the same all-reduce
    h.barrier(err, "allreduce", agree=n)
    _launch(ctx, n)
    if h.virtual:
        return [h.peer(ctx.out, r)[:n].clone().view(x[r].shape) for r in range(h.world)]
    return ctx.out[:n].clone().view(x.shape)
