"""Device-side distributed primitives (`dl`), written in plain Triton.

Two levels, one source for the interpreter (CPU ranks = processes, heaps in /dev/shm) and the
compiler (GPU, torch symmetric memory or virtual ranks):

1. Triton-distributed's level (arXiv 2504.19442; `python/triton_dist/language/distributed_ops.py`):
   `rank`, `num_ranks`, `symm_at`, `notify` (release), `wait` (acquire, returns a token),
   `consume_token`, `put`, `get`, `put_signal`. Built from loads, stores, `atomic_add/xchg/cas` and
   pointer arithmetic over the heap base table (the Iris `translate` idea, ROCm/iris `iris/iris.py`),
   so no compiler fork and no NVSHMEM bitcode.
2. TileLink's level (arXiv 2503.20313; its code is unreleased, names follow the paper summaries):
   `producer_tile_notify`, `consumer_tile_wait`, `tile_push_data`, `tile_pull_data`, and the tile
   mappings `tile_rank_range` (tile -> ranks whose data it reads) and `swizzle_local_first`
   (compute order starting with data the rank already has).

Signals are int64 slots in the symmetric heap, written only through `notify` and read only through
`wait`. They carry epochs (the op's call counter): a wait asks for `signal >= epoch`, so nothing is
ever reset between iterations. Every wait is bounded by `max_spins` (host: `spins_for(timeout_s)`);
on expiry it records (signal address, awaited, seen) in the rank's error slot, later waits of the
launch give up at once, and the host raises `DistTimeoutError` naming rank, signal and value.

Ordering: the acquire atomic in `wait` orders the loads after it (in LLVM and in hardware);
`consume_token` adds a data dependency in the spirit of Triton-distributed's op, which the compiler
may fold. The interpreter runs programs of a launch one after another, so kernels only wait on
lower program ids, other ranks or earlier launches (docs/architecture.md, conventions).
"""

from __future__ import annotations

import triton
import triton.language as tl

# ----------------------------------------------------------------------------- level 1


@triton.jit
def rank(host_rank, VIRTUAL: tl.constexpr):
    """This program's rank: a kernel argument, or grid axis 1 with virtual ranks on one device."""
    if VIRTUAL:
        return tl.program_id(1)
    else:
        return host_rank


@triton.jit
def num_ranks(world, VIRTUAL: tl.constexpr):
    if VIRTUAL:
        return tl.num_programs(1)
    else:
        return world


@triton.jit
def symm_at(ptr, me, peer, bases):
    """Address of the object at `ptr` (in rank `me`'s heap) in rank `peer`'s heap."""
    delta = tl.load(bases + peer) - tl.load(bases + me)  # bytes between the two heaps
    # heap bases are 16-byte aligned (the heap checks), so `>> 4 << 4` changes nothing but lets the compiler see that
    # the result is as aligned as `ptr`; without it every load through a heap pointer was scalar
    # (no cp.async, no vector stores: the fused AG-GEMM ran 6.6x slower than the same tile GEMM on an H200)
    byte_ptr = tl.cast(ptr, tl.pointer_type(tl.int8)) + ((delta >> 4) << 4)
    return tl.cast(byte_ptr, ptr.dtype)


@triton.jit
def localize(ptr, host_rank, me, bases, VIRTUAL: tl.constexpr):
    """Host passes rank `host_rank`'s pointers; with virtual ranks each program moves to its own."""
    if VIRTUAL:
        return symm_at(ptr, host_rank, me, bases)
    else:
        return ptr


@triton.jit
def notify(sig, peer, value, me, bases, OP: tl.constexpr = "set"):
    """Set (or add to) `sig` on `peer` with release semantics: data stored before is visible first.
    The CTA barrier first makes every thread's stores precede the one thread's release atomic
    (Triton-distributed does `__syncthreads()` before `notify` for the same reason)."""
    p = symm_at(sig, me, peer, bases)
    tl.debug_barrier()
    if OP == "add":
        tl.atomic_add(p, value, sem="release", scope="sys")
    else:
        tl.atomic_xchg(p, value, sem="release", scope="sys")


@triton.jit
def wait(sig, value, max_spins, err):
    """Spin (acquire) until the local signal `sig` >= `value`; returns the seen value as a token.
    Gives up after `max_spins` polls, or at once if this launch already timed out (err[0] != 0)."""
    seen = tl.atomic_add(sig, 0, sem="acquire", scope="sys")
    spins = max_spins * 0
    while (seen < value) & (spins < max_spins):
        seen = tl.atomic_add(sig, 0, sem="acquire", scope="sys")
        failed = tl.atomic_add(err, 0, sem="relaxed", scope="sys")
        spins = tl.where(failed != 0, max_spins, spins + 1)
    tl.debug_barrier()  # the acquiring thread's view is ordered before every thread's loads
    if seen < value:
        zero = tl.zeros((), dtype=err.dtype.element_ty)  # cas wants cmp/val typed like *err
        if tl.atomic_cas(err, zero, zero + 1, sem="acq_rel", scope="sys") == 0:  # first timeout wins
            tl.store(err + 1, tl.cast(sig, tl.uint64).to(tl.int64, bitcast=True))
            tl.store(err + 2, value)
            tl.store(err + 3, seen)
    return seen


@triton.jit
def consume_token(x, token):
    """Tie `x` (a pointer or value) to a wait's token so later loads depend on the wait."""
    return x + (token - token).to(tl.int32)


@triton.jit
def put(dst, src, offs, mask, peer, me, bases):
    """Copy src[offs] (local) to dst[offs] on `peer` (SM-driven, like nvshmem putmem_block)."""
    tl.store(symm_at(dst + offs, me, peer, bases), tl.load(src + offs, mask=mask), mask=mask)


@triton.jit
def get(dst, src, offs, mask, peer, me, bases):
    """Copy src[offs] on `peer` to the local dst[offs] (nvshmem getmem_block)."""
    tl.store(dst + offs, tl.load(symm_at(src + offs, me, peer, bases), mask=mask), mask=mask)


@triton.jit
def put_signal(dst, src, offs, mask, sig, value, peer, me, bases):
    """put, then notify (release orders the data before the signal); putmem_signal_block."""
    put(dst, src, offs, mask, peer, me, bases)
    notify(sig, peer, value, me, bases, "set")


# ----------------------------------------------------------------------------- level 2 (TileLink)


@triton.jit
def producer_tile_notify(sig, channel, peer, epoch, me, bases):
    """The producer tile mapped to `channel` is done: tell the consumer tiles on `peer`."""
    notify(sig + channel, peer, epoch, me, bases, "set")


@triton.jit
def consumer_tile_wait(sig, ch_lo, ch_hi, epoch, max_spins, err):
    """Wait for exactly the producer channels [ch_lo, ch_hi] this tile reads; returns a token."""
    # typed like the signals: `epoch * 0` would be i32 whenever the launch passes a small epoch
    # (Triton types an int argument by its value), and the compiler rejects a loop-carried type change
    token = tl.zeros((), dtype=sig.dtype.element_ty)
    for ch in range(ch_lo, ch_hi + 1):
        token += wait(sig + ch, epoch, max_spins, err) - epoch
    return token


@triton.jit
def tile_push_data(dst_ptrs, vals, mask, peer, me, bases):
    tl.store(symm_at(dst_ptrs, me, peer, bases), vals, mask=mask)


@triton.jit
def tile_pull_data(src_ptrs, mask, peer, me, bases):
    return tl.load(symm_at(src_ptrs, me, peer, bases), mask=mask, other=0.0)


@triton.jit
def tile_rank_range(row0, BM: tl.constexpr, rows_per_rank, n_rows):
    """Rank mapping: the ranks owning rows [row0, row0 + BM) of a row-sharded matrix."""
    last = tl.minimum(row0 + BM, n_rows) - 1
    return row0 // rows_per_rank, last // rows_per_rank


@triton.jit
def swizzle_local_first(pid_m, me, rows_per_rank, BM: tl.constexpr, num_pid_m):
    """Compute order: rotate row tiles so a rank starts on the tile holding its own first row,
    then walks the next ranks' rows (Triton-distributed tutorial 07, `pid_m + rank * per_rank`)."""
    return (pid_m + (me * rows_per_rank) // BM) % num_pid_m


# ----------------------------------------------------------------------------- host side
