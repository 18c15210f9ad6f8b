"""Device helpers shared by the expert-parallel kernels over the symmetric heap (the fused dispatch / combine
of `ep_a2a.py` and COMET's fused layers, `comet_layer0.py` / `comet_layer1.py`): moving blocks of rows into a
peer's buffer, and a test-only event log.

Rows are pushed by the sending rank (`dl.tile_push_data`, one store per element through the peer's heap
base), as in Triton-distributed's `EPAll2AllLayer` (arXiv 2504.19442) and DeepEP's intranode kernels.
"""

from __future__ import annotations

import triton
import triton.language as tl

from tessera.distributed import lang as dl


@triton.jit
def push_block(src, dst, row0, n, dst_row0, H, peer, me, bases, BLOCK_R: tl.constexpr, BLOCK_H: tl.constexpr):
    """Rows src[row0 : row0 + min(n, BLOCK_R)] (local, H columns) -> peer's dst[dst_row0 : ...]."""
    r = tl.arange(0, BLOCK_R)
    rm = r < n
    for h0 in range(0, H, BLOCK_H):
        c = h0 + tl.arange(0, BLOCK_H)
        m = rm[:, None] & (c[None, :] < H)
        vals = tl.load(src + (row0 + r[:, None]) * H + c[None, :], mask=m)  # [BLOCK_R, BLOCK_H]
        dl.tile_push_data(dst + (dst_row0 + r[:, None]) * H + c[None, :], vals, m, peer, me, bases)


@triton.jit
def push_vec(src, dst, row0, n, dst_row0, peer, me, bases, BLOCK_R: tl.constexpr):
    """Entries src[row0 : row0 + min(n, BLOCK_R)] -> peer's dst[dst_row0 : ...] (a weight or id per row)."""
    r = tl.arange(0, BLOCK_R)
    rm = r < n
    dl.tile_push_data(dst + dst_row0 + r, tl.load(src + row0 + r, mask=rm), rm, peer, me, bases)


@triton.jit
def push_rows(src, dst, w_src, w_dst, row_lo, n_rows, dst_row0, H, peer, me, bases,
              HAS_W: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_H: tl.constexpr):
    """Rows src[row_lo : row_lo + n_rows] -> peer's dst[dst_row0 : ...] (and their weights when HAS_W)."""
    for r0 in range(0, n_rows, BLOCK_R):
        push_block(src, dst, row_lo + r0, n_rows - r0, dst_row0 + r0, H, peer, me, bases, BLOCK_R, BLOCK_H)
        if HAS_W:
            push_vec(w_src, w_dst, row_lo + r0, n_rows - r0, dst_row0 + r0, peer, me, bases, BLOCK_R)


@triton.jit
def trace_event(trace, kind, a, b, TRACE: tl.constexpr):
    """Test-only event log (compiled out unless TRACE): trace[0] counts events, trace[1] is the capacity,
    event i is trace[4 + 3 i : 7 + 3 i] = (kind, a, b); i is the order in which the rank's programs logged."""
    if TRACE:
        i = tl.atomic_add(trace, 1, sem="acq_rel")
        if i < tl.load(trace + 1):
            tl.store(trace + 4 + 3 * i, kind)
            tl.store(trace + 5 + 3 * i, a)
            tl.store(trace + 6 + 3 * i, b)


@triton.jit
def wait_all(sig, offs, mask, value, max_spins, err):
    """Acquire-spin until the local signals sig[offs] >= value for every masked lane: one vector poll per spin
    instead of one `dl.wait` per signal (in the interpreter every nested jit call costs milliseconds). On
    timeout the first lagging signal goes through `dl.wait`, which records it in the error slot. Returns the
    smallest value seen, a token for `dl.consume_token`."""
    seen = tl.atomic_add(sig + offs, 0, mask=mask, sem="acquire", scope="sys")
    lag = mask & (seen < value)
    spins = max_spins * 0
    while (tl.max(lag.to(tl.int32), axis=0) > 0) & (spins < max_spins):
        seen = tl.atomic_add(sig + offs, 0, mask=mask, sem="acquire", scope="sys")
        lag = mask & (seen < value)
        failed = tl.atomic_add(err, 0, sem="relaxed", scope="sys")
        spins = tl.where(failed != 0, max_spins, spins + 1)
    tl.debug_barrier()  # the acquiring threads' view is ordered before every thread's loads
    token = tl.min(tl.where(mask, seen, value), axis=0)
    if token < value:
        token = dl.wait(sig + tl.min(tl.where(lag, offs, 2**30), axis=0), value, 1, err)
    return token
