"""COMET layer1: the second grouped GEMM (down projection) computed column block by column block, fused with
the top-k reduction and the combine, the shared tensor (the expert outputs) split along N, hidden (COMET,
arXiv 2502.19811 §3.1; bytedance/flux `moe_gather_rs`, whose Triton version splits N into 4 with a flag per
split). Along M the rows of one token are coupled by the top-k sum, so only N can be cut.

One launch per call on every rank; a host-built program table gives each program its role:

    pid:  [ GEMM1 tiles of block 0 | n_c senders of block 0 | GEMM1 tiles of block 1 | n_c senders of 1 | ...
          | home programs: per block, per BT tokens ]

    block j = columns [j H/nb, (j+1) H/nb) of every expert's rows
    ┌──────────────── block 0 ───────────┐┌──────────── block 1 ──────────┐
    │ y[:, cols 0] = act @ w_down[e]^T,  ││ same for cols 1 ...           │   GEMM1 tiles (all experts)
    │ each tile raises tflag (local)     ││                               │
    └────────────────────────────────────┘└───────────────────────────────┘
          └─> senders of block 0: wait for block 0's tiles, then per (source, token) group
              sum_k w_k y[row_k, cols 0] (fp32) -> the source's comb[me, token, cols 0];
              sig1[me, 0, c] on every peer        ... while block 1's tiles compute
    home programs (block j, tokens t..t+BT): wait sig1[r, j, *] of the ranks holding those tokens, then
    out[t, cols j] = sum over r = 0..W-1 of comb[r, t, cols j], rounded once.

Every sum has a fixed order (slots as received, then ranks 0..W-1) and every GEMM tile the same shape whatever
n_c and the block count, so fp32 results are bitwise the same for every configuration. Programs wait only on
lower program ids or other ranks (senders on earlier tiles; home programs, placed after every rank's senders,
on senders), so the interpreter cannot deadlock; on a GPU the grid must be resident.

The routing weights travelled with the rows in layer0 (`recv_w`), so they are applied on the expert rank
before the partial sums go home: the home rank adds at most W rows per token instead of k.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from tessera.distributed import lang as dl
from tessera.distributed import waits
from tessera.kernels.comm.tile import f32_dot, gemm_tile, launch_grid, round_to
from tessera.kernels.moe import comet_context as cc
from tessera.kernels.moe.comet_context import CometContext, CometLayout
from tessera.kernels.moe.ep_common import trace_event, wait_all

ROLE_TILE, ROLE_SEND, ROLE_HOME = 0, 1, 2
EV_TILE, EV_SENT, EV_HOME = 4, 5, 6  # trace events: (tile, block), (block, sender), (block, token tile)


@triton.jit
def _layer1_kernel(act, w_down, y, rtab, prog, gtab, grows, gw, gtok, comb, out, home_mask, params, tflag, sig1,
                   trace, err, epoch, H, FFN, T_cap, rank, world, bases, max_spins,
                   TOPK: tl.constexpr, NC_MAX: tl.constexpr, NB_MAX: tl.constexpr, BM: tl.constexpr,
                   BN: tl.constexpr, BK: tl.constexpr, BG: tl.constexpr, BT: tl.constexpr, F32_DOT: tl.constexpr,
                   VIRTUAL: tl.constexpr, FIX_RNE: tl.constexpr, TRACE: tl.constexpr):
    pid = tl.program_id(0)
    me = dl.rank(rank, VIRTUAL)
    W = dl.num_ranks(world, VIRTUAL)
    if VIRTUAL:  # the host passed virtual rank 0's pointers; a `localize` per pointer would be a no-op otherwise
        act = dl.localize(act, rank, me, bases, VIRTUAL)
        w_down = dl.localize(w_down, rank, me, bases, VIRTUAL)
        y = dl.localize(y, rank, me, bases, VIRTUAL)
        rtab = dl.localize(rtab, rank, me, bases, VIRTUAL)
        prog = dl.localize(prog, rank, me, bases, VIRTUAL)
        gtab = dl.localize(gtab, rank, me, bases, VIRTUAL)
        grows = dl.localize(grows, rank, me, bases, VIRTUAL)
        gw = dl.localize(gw, rank, me, bases, VIRTUAL)
        gtok = dl.localize(gtok, rank, me, bases, VIRTUAL)
        comb = dl.localize(comb, rank, me, bases, VIRTUAL)
        out = dl.localize(out, rank, me, bases, VIRTUAL)
        home_mask = dl.localize(home_mask, rank, me, bases, VIRTUAL)
        params = dl.localize(params, rank, me, bases, VIRTUAL)
        tflag = dl.localize(tflag, rank, me, bases, VIRTUAL)
        sig1 = dl.localize(sig1, rank, me, bases, VIRTUAL)
        err = dl.localize(err, rank, me, bases, VIRTUAL)
        trace = dl.localize(trace, rank, me, bases, VIRTUAL)
    n_c = tl.load(params + 0)  # params [16]: this call's sizes
    n_rt = tl.load(params + 1)
    tpb = tl.load(params + 3)  # column tiles per block
    n_ct = tl.cdiv(H, BN)
    role = tl.load(prog + pid * 3)  # prog [P, 3]: (role, a, b)
    pa = tl.load(prog + pid * 3 + 1)
    pb = tl.load(prog + pid * 3 + 2)
    if role == 0:  # GEMM1 tile: row tile pa, column tile pb; y [W S_cap, H] has act's rows
        e = tl.load(rtab + pa * 5 + 1)  # rtab [RT, 5], as in layer0
        a0 = tl.load(rtab + pa * 5 + 2)
        a_end = tl.load(rtab + pa * 5 + 3)
        rows = a0 + tl.arange(0, BM)
        cols = pb * BN + tl.arange(0, BN)
        # act [W S_cap, FFN], w_down [E_local, H, FFN]: B[k, n] = w_down[e, n, k]
        acc = gemm_tile(act, w_down + e * H * FFN, rows, cols, a_end, H, FFN, FFN, 1, 1, FFN, BK, BM, BN, F32_DOT)
        mask = (rows[:, None] < a_end) & (cols[None, :] < H)
        tl.store(y + rows[:, None] * H + cols[None, :], round_to(acc, y.dtype.element_ty, FIX_RNE), mask=mask)
        dl.notify(tflag + pa * n_ct + pb, me, epoch, me, bases, "set")  # tflag [RT n_ct] epochs, local
        if TRACE:
            trace_event(trace, 4, pa * n_ct + pb, pb // tpb, TRACE)
    elif role == 1:  # sender pb of column block pa
        ct_lo = pa * tpb
        nt = tl.minimum(ct_lo + tpb, n_ct) - ct_lo  # column tiles in this block
        token = tl.zeros((), dtype=tflag.dtype.element_ty)
        for f0 in range(0, n_rt * nt, 64):  # every GEMM1 tile of this block, all experts
            f = f0 + tl.arange(0, 64)
            token += wait_all(tflag, (f // nt) * n_ct + ct_lo + f % nt, f < n_rt * nt, epoch, max_spins, err) - epoch
        y = dl.consume_token(y, token)
        # gtab [GT, 3]: destination, first group, end group; grows / gw [G, TOPK]: act rows (-1: none) and
        # routing weights of a (source, token) group; gtok [G]: the token at its home
        for gt in range(pb, tl.load(params + 4), n_c):
            dest = tl.load(gtab + gt * 3)
            g = tl.load(gtab + gt * 3 + 1) + tl.arange(0, BG)
            gm = g < tl.load(gtab + gt * 3 + 2)
            tok = tl.load(gtok + g, mask=gm, other=0)
            for ct in range(ct_lo, ct_lo + nt):
                cols = ct * BN + tl.arange(0, BN)
                cm = cols < H
                acc = tl.zeros((BG, BN), dtype=tl.float32)
                for i in range(TOPK):  # the token's rows in the order received
                    row = tl.load(grows + g * TOPK + i, mask=gm, other=-1)
                    wt = tl.load(gw + g * TOPK + i, mask=gm, other=0.0)
                    v = tl.load(y + row[:, None] * H + cols[None, :], mask=(row >= 0)[:, None] & cm[None, :], other=0.0)
                    acc += wt[:, None] * v.to(tl.float32)
                dst = comb + (me * T_cap + tok[:, None]) * H + cols[None, :]  # comb [W, T_cap, H] fp32 on `dest`
                dl.tile_push_data(dst, acc, gm[:, None] & cm[None, :], dest, me, bases)
        for q in range(0, W):  # every peer, even one this rank holds nothing for; sig1 [W, NB_MAX, NC_MAX]
            dl.notify(sig1 + (me * NB_MAX + pa) * NC_MAX + pb, (me - q + W) % W, epoch, me, bases, "set")
        if TRACE:
            trace_event(trace, 5, pa, pb, TRACE)
    elif role == 2:  # home: column block pa, tokens pb BT ..; home_mask [T_cap, W]: token has rows on rank r
        t = pb * BT + tl.arange(0, BT)
        tm = t < tl.load(params + 5)
        token = tl.zeros((), dtype=sig1.dtype.element_ty)
        for f0 in range(0, W * NC_MAX, 64):  # the flags of block pa from the ranks holding these tokens' rows
            f = f0 + tl.arange(0, 64)
            r = f // NC_MAX
            need = tl.max(tl.load(home_mask + t[:, None] * W + r[None, :], mask=tm[:, None] & (r[None, :] < W),
                                  other=0), axis=0) > 0
            ch = (r * NB_MAX + pa) * NC_MAX + f % NC_MAX
            token += wait_all(sig1, ch, need & (f % NC_MAX < n_c), epoch, max_spins, err) - epoch
        comb = dl.consume_token(comb, token)
        for ct in range(pa * tpb, tl.minimum(pa * tpb + tpb, n_ct)):
            cols = ct * BN + tl.arange(0, BN)
            m2 = tm[:, None] & (cols[None, :] < H)
            acc = tl.zeros((BT, BN), dtype=tl.float32)
            for r in range(0, W):  # fixed order: bitwise the same whatever the configuration
                has = tl.load(home_mask + t * W + r, mask=tm, other=0) > 0
                v = tl.load(comb + (r * T_cap + t[:, None]) * H + cols[None, :], mask=m2 & has[:, None], other=0.0)
                acc += v
            tl.store(out + t[:, None] * H + cols[None, :], round_to(acc, out.dtype.element_ty, FIX_RNE), mask=m2)
        if TRACE:
            trace_event(trace, 6, pa, pb, TRACE)


def _groups(ctx: CometContext, lay: CometLayout) -> tuple[list, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rank lay.rank's reduce groups, one per (source, token) with rows here, ordered by destination in push
    order (remote peers r-1, r-2, ..., then this rank): (group tiles [dest, g0, g1], rows [G, k], weights
    [G, k], tokens [G]). Rows of a group stay in the order received (local expert, then slot)."""
    r, W, S, k = lay.rank, ctx.world, ctx.rows_cap, ctx.top_k
    recv_tok, recv_w = ctx.view("recv_tok", r).cpu(), ctx.view("recv_w", r).cpu()
    base = dict(zip(lay.order, lay.act_offsets))
    tiles, rows, wts, toks, g_off = [], [], [], [], 0
    for s in [*cc.push_order(r, W), r]:
        n = int(lay.counts[s, r].sum())
        if n == 0:
            continue
        tok = recv_tok[s * S: s * S + n]
        order = torch.argsort(tok, stable=True)
        uniq, cnt = torch.unique_consecutive(tok[order], return_counts=True)
        gid = torch.repeat_interleave(torch.arange(len(uniq)), cnt)
        slot = torch.arange(n) - torch.repeat_interleave(torch.cumsum(cnt, 0) - cnt, cnt)
        rr = torch.full((len(uniq), k), -1, dtype=torch.int64)
        ww = torch.zeros(len(uniq), k)
        rr[gid, slot] = base[s] + order
        ww[gid, slot] = recv_w[s * S: s * S + n][order]
        rows.append(rr)
        wts.append(ww)
        toks.append(uniq)
        tiles += [[s, g_off + g0, g_off + min(g0 + cc.BG, len(uniq))] for g0 in range(0, len(uniq), cc.BG)]
        g_off += len(uniq)
    cat = (lambda xs, shape, dt: torch.cat(xs) if xs else torch.zeros(shape, dtype=dt))
    return tiles, cat(rows, (0, k), torch.int64), cat(wts, (0, k), torch.float32), cat(toks, (0,), torch.int64)


def _programs(n_rt: int, n_ct: int, tpb: int, n_c: int) -> list[list[int]]:
    """Block by block: block j's GEMM1 tiles (row tile-major), then its n_c senders."""
    prog = []
    for j in range(triton.cdiv(n_ct, tpb)):
        prog += [[ROLE_TILE, rt, ct] for rt in range(n_rt) for ct in range(j * tpb, min((j + 1) * tpb, n_ct))]
        prog += [[ROLE_SEND, j, c] for c in range(n_c)]
    return prog


def comet_layer1(act, w_down, layout: CometLayout, ctx: CometContext) -> torch.Tensor:
    """act [R, I] (layer0's output, compute order), w_down [E_local, H, I], layout from the same call ->
    out [T, H]: each of this rank's tokens, sum over its slots of weight x expert output. With virtual ranks
    `act`, `w_down` and `layout` are lists and a list is returned."""
    h = ctx.heap
    per_rank = (lambda a: a) if h.virtual else (lambda a: [a])
    acts, wds, lays = per_rank(act), per_rank(w_down), per_rank(layout)
    bad = None
    for a, wd, lay in zip(acts, wds, lays):
        try:
            if lay.epoch != ctx.epoch:
                raise ValueError(f"comet layer1: the layout is from call {lay.epoch}, the context is at {ctx.epoch} "
                                 "(call layer1 after the layer0 it belongs to)")
            cc.check_input("comet layer1 act", a, (lay.rows, ctx.ffn), ctx.dtype, h.device)
            cc.check_input("comet layer1 w_down", wd, (ctx.experts_local, ctx.hidden, ctx.ffn), ctx.dtype, h.device)
        except ValueError as e:
            bad = bad or str(e)
    h.barrier(bad, "comet layer1")  # a bad argument on any rank raises on every rank instead of a timeout
    cfg = lays[0].config
    n_ct = ctx.col_tiles[1]
    tpb = triton.cdiv(n_ct, cfg.n_blocks)
    work = {lay.rank: _programs(lay.row_tiles, n_ct, tpb, cfg.n_c) for lay in lays}
    first_home = max(len(p) for p in work.values())  # home programs after every hosted rank's senders
    progs = {}
    for a, wd, lay in zip(acts, wds, lays):
        r = lay.rank
        if a.data_ptr() != ctx.view("act", r).data_ptr():
            ctx.view("act", r)[: lay.rows].copy_(a)
        if h.virtual:
            ctx.view("w_down", r).copy_(wd)
        tiles, rows, wts, toks = _groups(ctx, lay)
        cc.write_rows(ctx.view("gtab", r), tiles)
        for name, t in (("grows", rows), ("gw", wts), ("gtok", toks)):
            ctx.view(name, r)[: len(t)].copy_(t)
        pad = [[-1, 0, 0]] * (first_home - len(work[r]))
        home = [[ROLE_HOME, j, tt] for j in range(triton.cdiv(n_ct, tpb)) for tt in range(triton.cdiv(lay.num_tokens, cc.BT))]
        progs[r] = work[r] + pad + home
        cc.write_rows(ctx.view("prog", r), progs[r])
        p = ctx.view("params", r)
        p[cc.P_N_C], p[cc.P_N_RT], p[cc.P_N_BLOCKS], p[cc.P_TPB] = cfg.n_c, lay.row_tiles, cfg.n_blocks, tpb
        p[cc.P_N_GT], p[cc.P_T], p[cc.P_HOME] = len(tiles), lay.num_tokens, first_home
        cc.reset_trace(ctx, r)
    n_prog = max(len(p) for p in progs.values())
    for r, p in progs.items():  # the rest of a shorter rank's grid does nothing
        cc.write_rows(ctx.view("prog", r)[len(p):], [[-1, 0, 0]] * (n_prog - len(p)))
    if n_prog:
        _launch(ctx, n_prog, wds[0])
    outs = [ctx.view("out", lay.rank)[: lay.num_tokens].clone() for lay in lays]
    return outs if h.virtual else outs[0]


def _launch(ctx: CometContext, n_prog: int, w_down, check_waits: bool = True) -> None:
    """One launch of `n_prog` programs per hosted rank (tables already written); `check_waits=False` skips
    reading the error slot (a device sync; benchmarks only)."""
    h, b, (BM, BN, BK) = ctx.heap, ctx.buf, ctx.tiles
    ctx.last_grid["layer1"] = n_prog
    _layer1_kernel[launch_grid(n_prog, h)](
        b["act"], b["w_down"] if h.virtual else w_down, b["y"], b["rtab"], b["prog"], b["gtab"], b["grows"], b["gw"],
        b["gtok"], b["comb"], b["out"], b["home_mask"], b["params"], b["tflag"], b["sig1"], b.get("trace", b["params"]),
        h.err, ctx.epoch, ctx.hidden, ctx.ffn, ctx.max_tokens, h.rank, h.world, h.bases, ctx.max_spins,
        TOPK=ctx.top_k, NC_MAX=ctx.nc_max, NB_MAX=ctx.nb_max, BM=BM, BN=BN, BK=BK, BG=cc.BG, BT=cc.BT,
        F32_DOT=f32_dot(ctx.dtype), VIRTUAL=h.virtual, FIX_RNE=waits.interpreted(), TRACE=ctx.trace_cap > 0)
    if check_waits:
        waits.raise_on_wait_error(h, ctx.timeout_s, "comet layer1")
