"""COMET layer0: expert-parallel dispatch fused with the first grouped GEMM (gate/up + SwiGLU), the shared
tensor (the dispatched rows) split along M, tokens (COMET, arXiv 2502.19811 §3.1; bytedance/flux
`moe_ag_scatter`). Written from the paper's description on Tessera's `dl` primitives.

One launch per call on every rank, programs specialised by id:

    pid:  0 .. n_c-1                  n_c ..  (one per GEMM0 tile, in this order)
          senders                     compute tiles, rows sorted by (source in compute order, expert)
          ┌───────────────────┐       ┌────────────────┬────────────────┬────────────────┐
          │ my rows -> peers  │       │ source r (me)  │ source r+1     │ source r+2 ... │
          │ r-1, r-2, ...     │       │ e0 e1 .. (no   │ wait sig0[r+1] │ wait sig0[r+2] │
          │ then sig0[r] on   │       │ remote wait)   │ then compute   │ then compute   │
          │ each peer         │       └────────────────┴────────────────┴────────────────┘
          └───────────────────┘        local tiles run while remote rows are still arriving

- Senders: sender c pushes row blocks c, c + n_c, ... of this rank's rows for each remote peer (with their
  routing weights and token ids, which layer1 needs) into the peer's `recv[me]`, then raises `sig0[me, c]` on
  the peer to the call's epoch (a release: the rows are visible first). A rank with nothing for a peer still
  raises the flags. Peers are served in the order r-1, r-2, ...: rank r-1 computes rank r's rows right after
  its own, so every receiver gets its sources in the order it computes them.
- Compute tiles: a tile holds up to BM rows of one (source, local expert) group and BN columns of I; it
  waits only on the flags of its source (`consumer_tile_wait` over sig0[s, 0 .. n_c-1]) and computes
  silu(x W_gate^T) * (x W_up^T) in fp32, rounded once. This rank's own rows are copied into `recv[me]` on the
  host (the same gather that fills the send buffer) and its own flags raised before the launch, so local
  tiles never wait.
Senders never wait and come first, so the interpreter (programs in pid order) cannot deadlock; on a GPU the
grid must be resident (the GPU check keeps it within the SM count).

Output (the choice layer1 builds on): `act` [R, I] after SwiGLU, rows in compute order (this rank's own
rows, then source r+1's, ...; within a source by local expert, in the source's (token, slot) order), a view
of the context's heap buffer valid until the next call, and a `CometLayout`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from tessera.distributed import lang as dl
from tessera.distributed import waits
from tessera.kernels.comm.tile import f32_dot, gemm_tile, launch_grid, round_to
from tessera.kernels.moe import comet_context as cc
from tessera.kernels.moe.comet_context import CometConfig, CometContext, CometLayout
from tessera.kernels.moe.ep_common import push_block, push_vec, trace_event, wait_all
from tessera.kernels.moe.ep_layout import plan_sends

EV_SENT, EV_WAITED, EV_TILE = 1, 2, 3  # trace events: (sender, peer), (tile, first flag), (tile, first act row)


@triton.jit
def _layer0_kernel(send, send_w, send_tok, send_off, recv, recv_w, recv_tok, w_gu, act, rtab, params, sig0,
                   trace, err, epoch, H, FFN, S_cap, rank, world, bases, max_spins,
                   NC_MAX: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
                   BLOCK_R: tl.constexpr, BLOCK_H: tl.constexpr, F32_DOT: tl.constexpr, VIRTUAL: tl.constexpr,
                   FIX_RNE: tl.constexpr, TRACE: tl.constexpr):
    pid = tl.program_id(0)
    me = dl.rank(rank, VIRTUAL)
    W = dl.num_ranks(world, VIRTUAL)
    if VIRTUAL:  # the host passed virtual rank 0's pointers; a `localize` per pointer would be a no-op otherwise
        send = dl.localize(send, rank, me, bases, VIRTUAL)
        send_w = dl.localize(send_w, rank, me, bases, VIRTUAL)
        send_tok = dl.localize(send_tok, rank, me, bases, VIRTUAL)
        send_off = dl.localize(send_off, rank, me, bases, VIRTUAL)
        recv = dl.localize(recv, rank, me, bases, VIRTUAL)
        recv_w = dl.localize(recv_w, rank, me, bases, VIRTUAL)
        recv_tok = dl.localize(recv_tok, rank, me, bases, VIRTUAL)
        w_gu = dl.localize(w_gu, rank, me, bases, VIRTUAL)
        act = dl.localize(act, rank, me, bases, VIRTUAL)
        rtab = dl.localize(rtab, rank, me, bases, VIRTUAL)
        params = dl.localize(params, rank, me, bases, VIRTUAL)
        sig0 = dl.localize(sig0, rank, me, bases, VIRTUAL)
        err = dl.localize(err, rank, me, bases, VIRTUAL)
        trace = dl.localize(trace, rank, me, bases, VIRTUAL)
    n_c = tl.load(params + 0)  # params [16]: this call's sizes
    if pid < n_c:  # sender: send [S_cap, H] my rows destination-major, send_off [W + 1]
        dst = me * S_cap  # my block in each peer's receive buffers recv [W S_cap, H], recv_w, recv_tok [W S_cap]
        for q in range(1, W):
            peer = (me - q + W) % W
            lo = tl.load(send_off + peer)
            n = tl.load(send_off + peer + 1) - lo
            for b in range(pid, tl.cdiv(n, BLOCK_R), n_c):
                r0 = b * BLOCK_R
                push_block(send, recv + dst * H, lo + r0, n - r0, r0, H, peer, me, bases, BLOCK_R, BLOCK_H)
                push_vec(send_w, recv_w + dst, lo + r0, n - r0, r0, peer, me, bases, BLOCK_R)
                push_vec(send_tok, recv_tok + dst, lo + r0, n - r0, r0, peer, me, bases, BLOCK_R)
            dl.notify(sig0 + me * NC_MAX + pid, peer, epoch, me, bases, "set")  # sig0 [W, NC_MAX] epochs
            if TRACE:
                trace_event(trace, 1, pid, peer, TRACE)
    else:
        n_ct = tl.cdiv(FFN, BN)
        t = pid - n_c
        if t < tl.load(params + 1) * n_ct:  # a GEMM0 tile (programs past the end: other virtual ranks' grids)
            rt = t // n_ct  # rtab [RT, 5]: source, local expert, first act row, group's end act row, first recv row
            src = tl.load(rtab + rt * 5)
            e = tl.load(rtab + rt * 5 + 1)
            a0 = tl.load(rtab + rt * 5 + 2)
            a_end = tl.load(rtab + rt * 5 + 3)
            v0 = tl.load(rtab + rt * 5 + 4)
            ch = tl.arange(0, NC_MAX)  # the flags of this tile's source: sig0[src, 0 .. n_c-1]
            token = wait_all(sig0, src * NC_MAX + ch, ch < n_c, epoch, max_spins, err)
            if TRACE:
                trace_event(trace, 2, t, src * NC_MAX, TRACE)
            x = dl.consume_token(recv, token)
            rows = v0 + tl.arange(0, BM)  # recv rows
            cols = (t % n_ct) * BN + tl.arange(0, BN)
            M = v0 + (a_end - a0)
            wg = w_gu + e * 2 * FFN * H  # w_gu [E_local, 2 FFN, H]: gate rows, then up rows; B[k, n] = w[n, k]
            g = gemm_tile(x, wg, rows, cols, M, FFN, H, H, 1, 1, H, BK, BM, BN, F32_DOT)  # [BM, BN] fp32
            u = gemm_tile(x, wg + FFN * H, rows, cols, M, FFN, H, H, 1, 1, H, BK, BM, BN, F32_DOT)
            h = g / (1.0 + tl.exp(-g)) * u  # SwiGLU: silu(gate) * up
            out_rows = a0 + tl.arange(0, BM)  # act [W S_cap, FFN]
            mask = (out_rows[:, None] < a_end) & (cols[None, :] < FFN)
            tl.store(act + out_rows[:, None] * FFN + cols[None, :], round_to(h, act.dtype.element_ty, FIX_RNE),
                     mask=mask)
            if TRACE:
                trace_event(trace, 3, t, a0, TRACE)


def _publish(ctx: CometContext, r: int, x, topk_ids, topk_weights, w_gate_up, config) -> str | None:
    """Rank r's half of the call before the barrier: check, pack its rows, publish its counts; an error string
    instead of raising, so that every rank raises it after the barrier."""
    W, EL, S, H = ctx.world, ctx.experts_local, ctx.rows_cap, ctx.hidden
    dev = ctx.heap.device
    try:
        if x.dim() != 2 or x.shape[0] > ctx.max_tokens:
            raise ValueError(f"comet layer0: x must be [T <= {ctx.max_tokens}, {H}], got {tuple(x.shape)}")
        T = x.shape[0]
        cc.check_input("comet layer0 x", x, (T, H), ctx.dtype, dev)
        cc.check_input("comet layer0 topk_ids", topk_ids, (T, ctx.top_k), topk_ids.dtype, dev)
        cc.check_input("comet layer0 topk_weights", topk_weights, (T, ctx.top_k), topk_weights.dtype, dev)
        cc.check_input("comet layer0 w_gate_up", w_gate_up, (EL, 2 * ctx.ffn, H), ctx.dtype, dev)
        if T and (int(topk_ids.min()) < -1 or int(topk_ids.max()) >= ctx.num_experts):
            raise ValueError(f"comet layer0: expert ids must lie in [-1, {ctx.num_experts}), got "
                             f"[{int(topk_ids.min())}, {int(topk_ids.max())}]")
    except ValueError as e:
        return str(e)
    plan = plan_sends(topk_ids, ctx.num_experts, W)
    n = len(plan.token)
    off = [0, *torch.cumsum(plan.matrix.sum(1), 0).tolist()]
    send, send_w, send_tok = ctx.view("send", r), ctx.view("send_w", r), ctx.view("send_tok", r)
    send[:n].copy_(x[plan.token])
    send_w[:n].copy_(topk_weights.flatten()[plan.order])
    send_tok[:n].copy_(plan.token)
    ctx.view("send_off", r).copy_(torch.tensor(off))
    lo, hi = off[r], off[r + 1]  # my rows for my own experts: straight into my receive buffer, no flag to wait
    for name, src in (("recv", send), ("recv_w", send_w), ("recv_tok", send_tok)):
        ctx.view(name, r)[r * S: r * S + hi - lo].copy_(src[lo:hi])
    keep = topk_ids >= 0
    dest = torch.where(keep, topk_ids.div(EL, rounding_mode="floor"), W)
    mask = torch.zeros(T, W + 1, dtype=torch.int64, device=dev).scatter_(1, dest, 1)[:, :W]
    ctx.view("home_mask", r)[:T].copy_(mask)  # [T, W]: token t has a row on rank w
    cfg = config or ctx.config
    meta = torch.tensor([*plan.matrix.flatten().tolist(), T, cfg.n_c if cfg else 0, cfg.n_blocks if cfg else 0, 1])
    ctx.view("meta", r)[ctx.epoch % 2].copy_(meta)
    if ctx.heap.virtual:
        ctx.view("w_gu", r).copy_(w_gate_up)
    return None


def _launch(ctx: CometContext, row_tiles: int, cfg: CometConfig, w_gate_up, check_waits: bool = True) -> None:
    """One launch for every rank this process hosts; `row_tiles` is the most any of them has.
    `check_waits=False` skips reading the error slot (a device sync; benchmarks only)."""
    h, (BM, BN, BK) = ctx.heap, ctx.tiles
    n_tiles = row_tiles * ctx.col_tiles[0]
    b = ctx.buf
    w_gu = b["w_gu"] if h.virtual else w_gate_up
    ctx.last_grid["layer0"] = cfg.n_c + n_tiles
    _layer0_kernel[launch_grid(cfg.n_c + n_tiles, h)](
        b["send"], b["send_w"], b["send_tok"], b["send_off"], b["recv"], b["recv_w"], b["recv_tok"], w_gu, b["act"],
        b["rtab"], b["params"], b["sig0"], b.get("trace", b["params"]), h.err, ctx.epoch, ctx.hidden, ctx.ffn,
        ctx.rows_cap, h.rank, h.world, h.bases, ctx.max_spins,
        NC_MAX=ctx.nc_max, BM=BM, BN=BN, BK=BK, BLOCK_R=cc.BLOCK_R, BLOCK_H=min(128, triton.next_power_of_2(ctx.hidden)),
        F32_DOT=f32_dot(ctx.dtype), VIRTUAL=h.virtual, FIX_RNE=waits.interpreted(), TRACE=ctx.trace_cap > 0)
    if check_waits:
        waits.raise_on_wait_error(h, ctx.timeout_s, "comet layer0")


def comet_layer0(x, topk_ids, topk_weights, w_gate_up, ctx: CometContext, config: CometConfig | None = None):
    """x [T, H], topk_ids [T, k] (global expert ids, -1 = dropped), topk_weights [T, k], w_gate_up
    [E_local, 2I, H] (gate rows first) -> (act [R, I] after SwiGLU in compute order, CometLayout).
    `config` (the same on every rank) overrides the tuner for this call. With virtual ranks every argument is a
    list (one per rank) and so are the results."""
    h = ctx.heap
    ranks = ctx.ranks()
    per_rank = (lambda a: a) if h.virtual else (lambda a: [a])
    xs, ids, ws, wgu = (per_rank(a) for a in (x, topk_ids, topk_weights, w_gate_up))
    ctx.epoch += 1
    errors = [_publish(ctx, r, xs[i], ids[i], ws[i], wgu[i], config) for i, r in enumerate(ranks)]
    bad = next((e for e in errors if e), None)
    # peers are done with the previous call's buffers; an error on any rank raises on every rank
    h.barrier(bad, "comet layer0")
    counts, tokens, cfg, source = cc.agree(ctx)
    layouts = []
    for r in ranks:
        tab, offsets = cc.row_tiles(counts, r, ctx.rows_cap, ctx.tiles[0])
        cc.write_rows(ctx.view("rtab", r), tab)
        p = ctx.view("params", r)
        p[cc.P_N_C], p[cc.P_N_RT], p[cc.P_T] = cfg.n_c, len(tab), tokens[r]
        ctx.view("sig0", r)[r, : cfg.n_c] = ctx.epoch  # own rows are in place
        cc.reset_trace(ctx, r)
        layouts.append(CometLayout(r, ctx.epoch, cfg, source, tokens[r], counts, cc.compute_order(r, h.world),
                                   offsets, len(tab)))
    _launch(ctx, max(lay.row_tiles for lay in layouts), cfg, w_gate_up)
    acts = [ctx.view("act", lay.rank)[: lay.rows] for lay in layouts]
    return (acts, layouts) if h.virtual else (acts[0], layouts[0])
