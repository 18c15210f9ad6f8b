"""Expert-parallel dispatch and combine over the symmetric heap: rows `put` straight into the destination
rank's receive buffer, one ready flag per source rank (Triton-distributed's `EPAll2AllLayer`,
arXiv 2504.19442; DeepEP's intranode kernels do the same over NVLink).

Dispatch, one launch of 2W programs: program p < W sends to peer (me + p) % W (a circular order, so
the ranks do not all write to rank 0 first): this rank's rows for that peer into the peer's
`recv[me]`, their weights, the per-expert counts and where the rows start in this rank's send order,
then raises `sig_d[me]` on the peer to the call's epoch (a release: the data is visible first). A rank
that sends nothing to a peer still raises its flag. Programs W + s wait for source s's flag. Combine
sends each source's processed rows back into its `ret`, at the positions its send order gave them,
with flags `sig_c`; the routing weights are applied at home on the host.

Buffers are sized at context creation for the worst case (every pair of every source to one rank:
tokens x top-k rows per source), never reallocated. Flags carry epochs, so nothing is reset between
calls; every wait is bounded and a timeout raises naming the rank and the flag. One host barrier per
dispatch makes sure every peer has consumed the previous call's buffers, and agrees on errors (a token
count over capacity, or ranks with different shapes, raise on every rank).
Real ranks (one process each: `dispatch_fused`, `combine_fused`) and virtual ranks (W ranks on one device
over a `VirtualHeap`, the rank as grid axis 1: `dispatch_fused_virtual`, `combine_fused_virtual`, the
single-GPU check) share the kernels and the host-side staging.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from tessera.distributed import lang as dl
from tessera.distributed import parallel_state as ps
from tessera.distributed import waits
from tessera.kernels.moe.ep_common import push_rows
from tessera.kernels.moe.ep_layout import (
    DispatchLayout,
    combine_at_home,
    experts_per_rank,
    make_layout,
    plan_sends,
)


@triton.jit
def _dispatch_kernel(send, send_w, send_off, send_cnt, recv, recv_w, recv_meta, sig, err, epoch, H, S_cap, EL,
                     rank, world, bases, max_spins,
                     BLOCK_R: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_E: tl.constexpr, VIRTUAL: tl.constexpr):
    pid = tl.program_id(0)
    me = dl.rank(rank, VIRTUAL)
    W = dl.num_ranks(world, VIRTUAL)
    send = dl.localize(send, rank, me, bases, VIRTUAL)  # [S_cap, H] my rows, destination-major
    send_w = dl.localize(send_w, rank, me, bases, VIRTUAL)  # [S_cap]
    send_off = dl.localize(send_off, rank, me, bases, VIRTUAL)  # [W + 1] first row per destination
    send_cnt = dl.localize(send_cnt, rank, me, bases, VIRTUAL)  # [W, EL] rows per destination and local expert
    recv = dl.localize(recv, rank, me, bases, VIRTUAL)  # [W, S_cap, H] by source
    recv_w = dl.localize(recv_w, rank, me, bases, VIRTUAL)  # [W, S_cap]
    recv_meta = dl.localize(recv_meta, rank, me, bases, VIRTUAL)  # [W, EL + 1]: counts, then send offset
    sig = dl.localize(sig, rank, me, bases, VIRTUAL)  # [W] ready flag per source
    err = dl.localize(err, rank, me, bases, VIRTUAL)
    if pid < W:
        peer = (me + pid) % W
        lo = tl.load(send_off + peer)
        n = tl.load(send_off + peer + 1) - lo
        push_rows(send, recv + me * S_cap * H, send_w, recv_w + me * S_cap, lo, n, 0, H, peer, me, bases,
                   True, BLOCK_R, BLOCK_H)
        e = tl.arange(0, BLOCK_E)
        meta = tl.where(e < EL, tl.load(send_cnt + peer * EL + e, mask=e < EL, other=0), lo)
        dl.tile_push_data(recv_meta + me * (EL + 1) + e, meta, e < EL + 1, peer, me, bases)
        dl.notify(sig + me, peer, epoch, me, bases, "set")  # OP spelled out: triton 3.6 cannot take its default
    else:
        dl.wait(sig + (pid - W), epoch, max_spins, err)


@triton.jit
def _combine_kernel(back, ret, recv_meta, sig, err, epoch, H, S_cap, EL, rank, world, bases, max_spins,
                    BLOCK_R: tl.constexpr, BLOCK_H: tl.constexpr, VIRTUAL: tl.constexpr):
    pid = tl.program_id(0)
    me = dl.rank(rank, VIRTUAL)
    W = dl.num_ranks(world, VIRTUAL)
    back = dl.localize(back, rank, me, bases, VIRTUAL)  # [W, S_cap, H] processed rows by source
    ret = dl.localize(ret, rank, me, bases, VIRTUAL)  # [S_cap, H] my rows, home again, in send order
    recv_meta = dl.localize(recv_meta, rank, me, bases, VIRTUAL)
    sig = dl.localize(sig, rank, me, bases, VIRTUAL)
    err = dl.localize(err, rank, me, bases, VIRTUAL)
    if pid < W:
        peer = (me + pid) % W
        n = tl.zeros((), dtype=tl.int64)  # typed like the counts: the compiler rejects an i32 -> i64 loop carry
        for e in range(EL):
            n += tl.load(recv_meta + peer * (EL + 1) + e)
        row0 = tl.load(recv_meta + peer * (EL + 1) + EL)  # where the peer's rows for me start in its send order
        push_rows(back + peer * S_cap * H, ret, back, ret, 0, n, row0, H, peer, me, bases, False, BLOCK_R, BLOCK_H)
        dl.notify(sig + me, peer, epoch, me, bases, "set")  # OP spelled out: triton 3.6 cannot take its default
    else:
        dl.wait(sig + (pid - W), epoch, max_spins, err)


@dataclass
class EPA2AContext:
    heap: object
    max_tokens: int  # per rank and call
    top_k: int
    hidden: int
    num_experts: int
    dtype: torch.dtype
    send: torch.Tensor  # heap [S_cap, H]
    send_w: torch.Tensor  # heap [S_cap] fp32
    send_off: torch.Tensor  # heap [W + 1] int64
    send_cnt: torch.Tensor  # heap [W, EL] int64
    recv: torch.Tensor  # heap [W, S_cap, H]
    recv_w: torch.Tensor  # heap [W, S_cap] fp32
    recv_meta: torch.Tensor  # heap [W, EL + 1] int64
    back: torch.Tensor  # heap [W, S_cap, H]
    ret: torch.Tensor  # heap [S_cap, H]
    sig_d: torch.Tensor  # heap [W] int64
    sig_c: torch.Tensor  # heap [W] int64
    timeout_s: float | None
    max_spins: int
    epoch: int = 0

    @property
    def rows_cap(self) -> int:
        return self.max_tokens * self.top_k


def ep_a2a_heap_bytes(world: int, max_tokens: int, top_k: int, hidden: int, num_experts: int,
                      dtype: torch.dtype) -> int:
    """Heap bytes `create_ep_a2a_context` needs (plus alignment slack)."""
    S, el, b = max_tokens * top_k, num_experts // max(world, 1), torch.tensor([], dtype=dtype).element_size()
    rows = (S + 2 * world * S + S) * hidden * b
    small = 4 * S + 4 * world * S + 8 * (world + 1 + world * el + world * (el + 1) + 2 * world)
    return rows + small + 16 * 64


def create_ep_a2a_context(heap, max_tokens: int, top_k: int, hidden: int, num_experts: int,
                          dtype: torch.dtype = torch.float32,
                          timeout_s: float | None = None) -> EPA2AContext:
    """Collective: buffers for up to `max_tokens` tokens per rank and call, sized for the worst case."""
    W = heap.world
    args = {"max_tokens": max_tokens, "top_k": top_k, "hidden": hidden, "num_experts": num_experts,
            "dtype": str(dtype)}
    bad = None
    try:
        EL = experts_per_rank(num_experts, W)
        if min(max_tokens, top_k, hidden) < 1:
            raise ValueError(f"ep dispatch: max_tokens, top_k and hidden must be >= 1, got {args}")
        if heap.nbytes < ep_a2a_heap_bytes(W, max_tokens, top_k, hidden, num_experts, dtype):
            raise ValueError(f"ep dispatch: the heap holds {heap.nbytes} bytes, these buffers need "
                             f"{ep_a2a_heap_bytes(W, max_tokens, top_k, hidden, num_experts, dtype)}")
    except ValueError as e:
        bad, EL = str(e), 1
    if heap.virtual:  # one process holds every rank: nothing to agree on
        if bad:
            raise ValueError(bad)
    else:
        ps.check_consistent("create_ep_a2a_context", args, heap.group, bad)
    S = max_tokens * top_k
    t = heap.tensor
    return EPA2AContext(heap, max_tokens, top_k, hidden, num_experts, dtype,
                        t((S, hidden), dtype, "ep.send"), t((S,), torch.float32, "ep.send_w"),
                        t((W + 1,), torch.int64, "ep.send_off"), t((W, EL), torch.int64, "ep.send_cnt"),
                        t((W, S, hidden), dtype, "ep.recv"), t((W, S), torch.float32, "ep.recv_w"),
                        t((W, EL + 1), torch.int64, "ep.recv_meta"), t((W, S, hidden), dtype, "ep.back"),
                        t((S, hidden), dtype, "ep.ret"), t((W,), torch.int64, "ep.sig_d"),
                        t((W,), torch.int64, "ep.sig_c"), timeout_s, waits.spins_for(timeout_s, heap.device))


def _blocks(hidden: int) -> dict:
    return {"BLOCK_R": 16, "BLOCK_H": min(128, triton.next_power_of_2(hidden))}


def _check(x, topk_ids, ctx: EPA2AContext) -> str | None:
    T = x.shape[0]
    if T > ctx.max_tokens or x.shape[1:] != (ctx.hidden,) or x.dtype != ctx.dtype or topk_ids.shape != (T, ctx.top_k):
        return (f"ep dispatch: expected at most {ctx.max_tokens} tokens of [{ctx.hidden}] {ctx.dtype} with top-"
                f"{ctx.top_k} ids, got x {tuple(x.shape)} {x.dtype}, ids {tuple(topk_ids.shape)}")
    return None


def _stage(x, topk_ids, topk_weights, ctx: EPA2AContext, view):
    """One rank's rows, weights, offsets and counts into its send buffers (`view(t)`: that rank's copy of
    heap tensor t) -> (plan, the rows' weights in send order)."""
    plan = plan_sends(topk_ids, ctx.num_experts, ctx.heap.world)
    S = len(plan.token)
    view(ctx.send)[:S].copy_(x[plan.token])
    weight = topk_weights.flatten()[plan.order]
    view(ctx.send_w)[:S].copy_(weight)
    view(ctx.send_off).copy_(torch.tensor([0, *torch.cumsum(plan.matrix.sum(1), 0).tolist()]))
    view(ctx.send_cnt).copy_(plan.matrix)
    return plan, weight


def _received(plan, weight, T: int, ctx: EPA2AContext, view, device):
    """One rank's received rows after the dispatch kernel -> (rows expert-major, weights, layout)."""
    EL = ctx.send_cnt.shape[1]
    layout = make_layout(plan, weight, view(ctx.recv_meta)[:, :EL].cpu(), T, device)
    recv, recv_w = view(ctx.recv), view(ctx.recv_w)
    rows = torch.cat([recv[s, :n] for s, n in enumerate(layout.recv_counts)])  # source-major
    weights = torch.cat([recv_w[s, :n] for s, n in enumerate(layout.recv_counts)])
    return rows[layout.regroup], weights[layout.regroup], layout


def _launch_dispatch(ctx: EPA2AContext, grid, virtual: bool) -> None:
    h, EL = ctx.heap, ctx.send_cnt.shape[1]
    _dispatch_kernel[grid](ctx.send, ctx.send_w, ctx.send_off, ctx.send_cnt, ctx.recv, ctx.recv_w,
                           ctx.recv_meta, ctx.sig_d, h.err, ctx.epoch, ctx.hidden, ctx.rows_cap, EL, h.rank,
                           h.world, h.bases, ctx.max_spins, BLOCK_E=triton.next_power_of_2(EL + 1),
                           VIRTUAL=virtual, **_blocks(ctx.hidden))
    waits.raise_on_wait_error(h, ctx.timeout_s, "ep dispatch")


def _launch_combine(ctx: EPA2AContext, grid, virtual: bool) -> None:
    h = ctx.heap
    _combine_kernel[grid](ctx.back, ctx.ret, ctx.recv_meta, ctx.sig_c, h.err, ctx.epoch, ctx.hidden,
                          ctx.rows_cap, ctx.send_cnt.shape[1], h.rank, h.world, h.bases, ctx.max_spins,
                          VIRTUAL=virtual, **_blocks(ctx.hidden))
    waits.raise_on_wait_error(h, ctx.timeout_s, "ep combine")


def _stage_back(rows: torch.Tensor, layout: DispatchLayout, ctx: EPA2AContext, view) -> None:
    back = view(ctx.back)
    for s, chunk in enumerate(layout.source_major(rows).split(layout.recv_counts)):
        back[s, : len(chunk)].copy_(chunk)


def dispatch_fused(x: torch.Tensor, topk_ids: torch.Tensor, topk_weights: torch.Tensor, ctx: EPA2AContext):
    """Same contract as `tessera.parallel.ep_dispatch.dispatch`: (rows [R, H] expert-major, weights, layout)."""
    err = _check(x, topk_ids, ctx)
    if err is None:
        plan, weight = _stage(x, topk_ids, topk_weights, ctx, lambda t: t)
    ctx.epoch += 1
    ctx.heap.barrier(err, "ep dispatch")  # peers are done with the previous call's buffers; errors on every rank
    _launch_dispatch(ctx, (2 * ctx.heap.world,), False)
    return _received(plan, weight, x.shape[0], ctx, lambda t: t, x.device)


def combine_fused(rows: torch.Tensor, layout: DispatchLayout, ctx: EPA2AContext) -> torch.Tensor:
    """rows [R, H] in dispatch order -> [T, H], each token's rows weighted and summed at home."""
    _stage_back(rows, layout, ctx, lambda t: t)
    # no barrier: every peer passed this call's dispatch barrier, so it is done with the last `ret`
    _launch_combine(ctx, (2 * ctx.heap.world,), False)
    return combine_at_home(ctx.ret[: len(layout.token)], layout.token, layout.weight, layout.num_tokens)


# -- virtual ranks: W ranks on one device (a `VirtualHeap`), one launch with the rank as grid axis 1 ----------
def dispatch_fused_virtual(xs: list[torch.Tensor], topk_ids: list[torch.Tensor], topk_weights: list[torch.Tensor],
                           ctx: EPA2AContext) -> list[tuple]:
    """Every rank's dispatch in one launch (the single-GPU check): per-rank lists in, per-rank
    (rows, weights, layout) out, each as `dispatch_fused` returns it on a real rank."""
    h = ctx.heap
    if not h.virtual or not len(xs) == len(topk_ids) == len(topk_weights) == h.world:
        raise ValueError(f"dispatch_fused_virtual needs a VirtualHeap and {h.world} inputs per argument")
    errs = [e for e in (_check(x, i, ctx) for x, i in zip(xs, topk_ids)) if e]
    if errs:
        raise ValueError(errs[0])
    staged = [_stage(xs[r], topk_ids[r], topk_weights[r], ctx, lambda t, r=r: h.peer(t, r)) for r in range(h.world)]
    ctx.epoch += 1
    h.barrier(None, "ep dispatch")
    _launch_dispatch(ctx, (2 * h.world, h.world), True)
    return [_received(*staged[r], xs[r].shape[0], ctx, lambda t, r=r: h.peer(t, r), xs[r].device)
            for r in range(h.world)]


def combine_fused_virtual(rows: list[torch.Tensor], layouts: list[DispatchLayout], ctx: EPA2AContext) -> list:
    """Every rank's combine in one launch: per-rank rows in dispatch order -> per-rank [T, H]."""
    h = ctx.heap
    for r in range(h.world):
        _stage_back(rows[r], layouts[r], ctx, lambda t, r=r: h.peer(t, r))
    _launch_combine(ctx, (2 * h.world, h.world), True)
    return [combine_at_home(h.peer(ctx.ret, r)[: len(lo.token)], lo.token, lo.weight, lo.num_tokens)
            for r, lo in enumerate(layouts)]
