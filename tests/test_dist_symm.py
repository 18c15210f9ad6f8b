"""Symmetric heap, device primitives and failure behaviour, on real gloo processes (W=2).

Every call into the pool is bounded (`timeout=`), every device wait has a timeout, so a protocol
bug fails in seconds instead of hanging the suite.
"""

import glob
import os

import pytest
import torch
import triton
import triton.language as tl

from tessera.distributed import lang as dl
from tessera.distributed import waits
from tessera.distributed.testing import RankFailure, shared_pool

pytestmark = pytest.mark.dist


@pytest.fixture(scope="module")
def pool():
    return shared_pool(2)


def _shm_files():
    return sorted(glob.glob("/dev/shm/tessera_*"))


# ----------------------------------------------------------------------------- rank jobs


def _heap_roundtrip():
    from tessera.distributed import parallel_state as ps
    from tessera.distributed.symm import SymmetricHeap

    me, W = ps.rank(), ps.world_size()
    with SymmetricHeap(1 << 16) as heap:
        x = heap.tensor((3, 5), torch.float32, "x")
        y = heap.tensor((7,), torch.int64, "y")
        x.fill_(me + 1)
        heap.barrier()
        seen = [heap.peer(x, r).sum().item() for r in range(W)]
        offsets = (heap.offset_of(x), heap.offset_of(y))
        files = [f for f in os.listdir("/dev/shm") if f.startswith("tessera_")]
        heap.barrier()
    return seen, offsets, files, heap.bases.tolist()[me] != 0


@triton.jit
def _ring_kernel(buf, sig, cnt, got, err, epoch, rank, world, bases, max_spins, BLOCK: tl.constexpr):
    """put_signal my block to the next rank, count via notify(add) on rank 0, get from the previous."""
    nxt = (rank + 1) % world
    offs = tl.arange(0, BLOCK)
    mine = buf + rank * BLOCK
    dl.put_signal(mine, mine, offs, offs < BLOCK, sig + rank, epoch, nxt, rank, bases)
    dl.notify(cnt, 0, 1, rank, bases, "add")
    prv = (rank + world - 1) % world
    token = dl.wait(sig + prv, epoch, max_spins, err)
    src = dl.consume_token(buf, token) + prv * BLOCK
    tl.store(got + offs, tl.load(src + offs))
    dl.get(got + BLOCK, buf + prv * BLOCK, offs, offs < BLOCK, prv, rank, bases)


def _lang_ring(iters):
    from tessera.distributed import parallel_state as ps
    from tessera.distributed.symm import SymmetricHeap

    me, W = ps.rank(), ps.world_size()
    heap = SymmetricHeap(1 << 16)
    buf = heap.tensor((W, 8), torch.float32, "buf")
    sig = heap.tensor((W,), torch.int64, "sig")
    cnt = heap.tensor((1,), torch.int64, "cnt")
    got = heap.tensor((16,), torch.float32, "got")
    spins = waits.spins_for(5.0, heap.device)
    out = []
    for epoch in range(1, iters + 1):
        buf[me] = torch.arange(8.0) + 100 * me + epoch
        heap.barrier()
        _ring_kernel[(1,)](buf, sig, cnt, got, heap.err, epoch, me, W, heap.bases, spins, BLOCK=8)
        waits.raise_on_wait_error(heap, 5.0, "ring")
        heap.barrier()
        out.append((got[:8].tolist(), got[8:].tolist(), sig.tolist(), cnt.item()))
    heap.close()
    return out


@triton.jit
def _bad_protocol_kernel(sig, err, rank, bases, max_spins):
    if rank == 1:
        dl.notify(sig + 1, 0, 4, rank, bases, "set")  # bug: announces epoch 4, rank 0 awaits 5
    else:
        dl.wait(sig + 1, 5, max_spins, err)
        dl.wait(sig + 1, 6, max_spins, err)  # gives up at once: the launch already failed


def _protocol_bug():
    import time

    from tessera.distributed import parallel_state as ps
    from tessera.distributed.symm import SymmetricHeap

    me = ps.rank()
    heap = SymmetricHeap(1 << 12)
    sig = heap.tensor((2,), torch.int64, "proto.sig")
    t0 = time.perf_counter()
    _bad_protocol_kernel[(1,)](sig, heap.err, me, heap.bases, waits.spins_for(1.0, heap.device))
    heap.barrier()
    waits.raise_on_wait_error(heap, 1.0, "proto")
    return time.perf_counter() - t0


def _too_small():
    from tessera.distributed.symm import SymmetricHeap

    heap = SymmetricHeap(4096)
    heap.tensor((64, 64), torch.float32, "big")


def _mismatched_heap():
    from tessera.distributed import parallel_state as ps
    from tessera.distributed.symm import SymmetricHeap

    SymmetricHeap(4096 * (1 + ps.rank()))


def _crash_after_heap(where):
    from tessera.distributed import parallel_state as ps
    from tessera.distributed.symm import SymmetricHeap

    me = ps.rank()
    if where == "before" and me == 1:
        os._exit(3)  # dies while rank 0 sets up the heap: rank 0 must error out, not hang
    heap = SymmetricHeap(1 << 16)
    heap.tensor((16,), torch.float32, "x")
    if me == 1:
        raise RuntimeError("rank 1 fails on purpose while holding a heap")


# ----------------------------------------------------------------------------- tests


def test_heap_layout_peer_views_and_unlinked_files(pool):
    res = pool.run(_heap_roundtrip, timeout=60)
    for seen, offsets, files, nonzero in res:
        assert seen == [15.0, 30.0]  # every rank reads every peer's copy
        assert offsets == res[0][1]  # identical layout on every rank
        assert offsets[0] % 128 == 0 and offsets[1] % 128 == 0
        assert files == []  # names are unlinked once every rank has mapped them
        assert nonzero


def test_put_get_signal_notify_add_over_epochs(pool):
    res = pool.run(_lang_ring, 3, timeout=60)
    for me, iters in enumerate(res):
        prv = (me + 1) % 2
        for epoch, (pushed, pulled, sig, _cnt) in enumerate(iters, 1):
            expect = [float(i + 100 * prv + epoch) for i in range(8)]
            assert pushed == expect and pulled == expect
            assert sig[prv] == epoch  # epoch-valued: never reset between iterations
    assert [it[3] for it in res[0]] == [2, 4, 6]  # notify(add) from both ranks counted on rank 0


def test_protocol_bug_is_a_clear_error_not_a_hang(pool):
    with pytest.raises(RankFailure) as ei:
        pool.run(_protocol_bug, timeout=60)
    errs = ei.value.errors
    assert set(errs) == {0}, errs  # rank 1 notified and finished
    msg = errs[0]
    assert "DistTimeoutError" in msg and "rank 0" in msg
    assert "proto.sig[1]" in msg and ">= 5" in msg and "last seen 4" in msg


def test_heap_too_small_raises_on_every_rank(pool):
    with pytest.raises(RankFailure) as ei:
        pool.run(_too_small, timeout=60)
    assert set(ei.value.errors) == {0, 1}
    assert all("heap too small" in e for e in ei.value.errors.values())


def test_mismatched_heap_sizes_raise_on_every_rank(pool):
    with pytest.raises(RankFailure) as ei:
        pool.run(_mismatched_heap, timeout=60)
    assert set(ei.value.errors) == {0, 1}
    assert all("ranks disagree" in e for e in ei.value.errors.values())


@pytest.mark.parametrize("where", ["raise", "before"])
def test_failing_run_leaves_nothing_in_dev_shm(pool, where):
    """'raise': rank 1 fails holding a heap; 'before': rank 1 dies while rank 0 creates its file.
    (A rank dying after setup is covered by 'raise': names are unlinked once mapped.)"""
    before = _shm_files()
    with pytest.raises(RankFailure) as ei:
        pool.run(_crash_after_heap, where, timeout=60)
    assert 1 in ei.value.errors and (where == "raise" or "died" in ei.value.errors[1])
    if where == "before":
        assert 0 in ei.value.errors  # rank 0 got an error, not a hang
    pool.stop()  # processes gone: only atexit/error-path cleanup could have removed files now
    assert _shm_files() == before
