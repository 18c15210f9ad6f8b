"""AllGather-GEMM, GEMM-ReduceScatter and AllReduce: fused Triton kernels (interpreted, real gloo
processes), the decomposed and sequential torch.distributed baselines, all against the torch
references in `tessera/kernels/comm/reference.py`.

What is asserted, per iteration (3 in a row, fresh data, no signal resets):
- allreduce (fused, one- and two-shot, fp32 and bf16): bitwise equal to the reference, because
  both sum in fp32 in rank order 0..W-1 and cast once;
- ag_gemm fused: the gathered A in the heap is bitwise equal to cat(shards); C within
  max|err| <= 1e-5 * max|ref| (fp32: tl.dot and torch accumulate K in different orders) or
  1e-2 (bf16: one rounding of the output, 2^-8 relative, plus that order);
- gemm_rs fused and every decomposed/sequential path: the same relative bounds.
Launches are staggered (rank r starts 0.2*(W-1-r) s late) so that a missing wait reads stale
data. Shapes are not multiples of the 16x16x16 tiles, so GEMM tiles straddle rank boundaries.
"""

import time
from functools import partial

import pytest
import torch

from tessera.distributed.testing import RankFailure, shared_pool

pytestmark = pytest.mark.dist
TOL = {"float32": 1e-5, "bfloat16": 1e-2}
M_LOC, K, N, NUMEL = 10, 40, 24, 150


@pytest.fixture(scope="module", params=[2, 4])
def pool(request):
    return shared_pool(request.param)


def _rel(x, ref):
    return ((x.float() - ref.float()).abs().max() / ref.float().abs().max().clamp_min(1e-30)).item()


def _op_job(op, impl, dtype_name, iters, seed):
    from tessera.distributed import parallel_state as ps
    from tessera.distributed.symm import SymmetricHeap
    from tessera.kernels.comm import decomposed as dec
    from tessera.kernels.comm import reference as ref
    from tessera.kernels.comm.ag_gemm import ag_gemm, create_ag_gemm_context
    from tessera.kernels.comm.allreduce import allreduce, create_allreduce_context
    from tessera.kernels.comm.gemm_rs import create_gemm_rs_context, gemm_rs

    me, W = ps.rank(), ps.world_size()
    dt = getattr(torch, dtype_name)
    heap = SymmetricHeap(1 << 20) if impl == "fused" else None
    if heap is not None:  # stagger launches so a missing or wrong wait reads stale data and fails
        barrier = heap.barrier
        heap.barrier = lambda *a, **kw: (barrier(*a, **kw), time.sleep(0.2 * (W - 1 - me)))
    ctx = None
    if impl == "fused":
        ctx = {
            "ag_gemm": lambda: create_ag_gemm_context(heap, M_LOC, N, K, dt, timeout_s=10),
            "gemm_rs": lambda: create_gemm_rs_context(heap, W * M_LOC, N, K, dt, timeout_s=10),
            "allreduce1": lambda: create_allreduce_context(heap, NUMEL + 64, dt, False, timeout_s=10),
            "allreduce2": lambda: create_allreduce_context(heap, NUMEL + 64, dt, True, timeout_s=10),
        }[op]()
    out = []
    for it in range(iters):
        g = torch.Generator().manual_seed(seed + 1000 * it)  # same draws on every rank
        if op == "ag_gemm":
            shards = [torch.randn(M_LOC, K, generator=g).to(dt) for _ in range(W)]
            bs = [torch.randn(N, K, generator=g).to(dt) for _ in range(W)]  # nn.Linear weight layout
            b = bs[me].t()  # strided [K, N] view
            fn = {"fused": partial(ag_gemm, ctx=ctx), "decomposed": partial(dec.ag_gemm_decomposed, chunks=3),
                  "sequential": dec.ag_gemm_sequential}[impl]
            got = fn(shards[me], b)
            expect = ref.ag_gemm_ref(shards, b)
            exact = bool(torch.equal(ctx.a_full, torch.cat(shards))) if impl == "fused" else None
        elif op == "gemm_rs":
            a_parts = [torch.randn(W * M_LOC, K, generator=g).to(dt) for _ in range(W)]
            b_parts = [torch.randn(K, N, generator=g).to(dt) for _ in range(W)]
            fn = {"fused": partial(gemm_rs, ctx=ctx), "decomposed": dec.gemm_rs_decomposed,
                  "sequential": dec.gemm_rs_sequential}[impl]
            got = fn(a_parts[me], b_parts[me])
            expect = ref.gemm_rs_ref(a_parts, b_parts)[me]
            exact = None
        else:
            xs = [torch.randn(3, NUMEL // 3 - it, generator=g).to(dt) for _ in range(W)]  # numel varies
            fn = {"fused": partial(allreduce, ctx=ctx), "decomposed": partial(dec.allreduce_decomposed, chunks=3),
                  "sequential": dec.allreduce_sequential}[impl]
            got = fn(xs[me])
            expect = ref.allreduce_ref(xs)
            exact = bool(torch.equal(got, expect)) if impl == "fused" else None
        assert got.shape == expect.shape and got.dtype == expect.dtype, (got.shape, got.dtype)
        out.append((_rel(got, expect), exact))
    return out


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("op", ["ag_gemm", "gemm_rs", "allreduce1", "allreduce2"])
def test_fused_matches_reference(pool, op, dtype):
    res = pool.run(_op_job, op, "fused", dtype, 3, 7, timeout=240)
    for rank_res in res:
        assert len(rank_res) == 3
        for rel, exact in rank_res:
            if op.startswith("allreduce") or op == "ag_gemm":
                assert exact is True  # bitwise: reduced output / gathered A
            assert rel <= TOL[dtype], rel


@pytest.mark.parametrize("impl", ["decomposed", "sequential"])
@pytest.mark.parametrize("op", ["ag_gemm", "gemm_rs", "allreduce1"])
def test_baselines_match_reference(pool, op, impl):
    for rank_res in pool.run(_op_job, op, impl, "float32", 2, 11, timeout=120):
        for rel, _ in rank_res:
            assert rel <= TOL["float32"], rel


def _bad_args_job(case):
    from tessera.distributed import parallel_state as ps
    from tessera.distributed.symm import SymmetricHeap
    from tessera.kernels.comm import decomposed as dec
    from tessera.kernels.comm.ag_gemm import ag_gemm, create_ag_gemm_context
    from tessera.kernels.comm.allreduce import allreduce, create_allreduce_context
    from tessera.kernels.comm.gemm_rs import create_gemm_rs_context

    me, W = ps.rank(), ps.world_size()
    if case == "rs_decomposed_indivisible":
        dec.gemm_rs_decomposed(torch.randn(W * 5 + 1, 4), torch.randn(4, 3))
    heap = SymmetricHeap(1 << 16)
    if case == "rs_indivisible":
        create_gemm_rs_context(heap, W * 5 + 1, 8, 8, torch.float32, timeout_s=5)
    elif case == "shape_mismatch":
        create_ag_gemm_context(heap, 4, 8, 8 + (me == 1), torch.float32, timeout_s=5)
    elif case == "dtype_mismatch":
        create_ag_gemm_context(heap, 4, 8, 8, torch.bfloat16 if me == 1 else torch.float32, timeout_s=5)
    elif case == "heap_too_small":
        create_ag_gemm_context(heap, 256, 64, 64, torch.float32, timeout_s=5)
    elif case == "call_shape_mismatch":  # context agreed, then rank 1 passes a wrong shard
        ctx = create_ag_gemm_context(heap, 4, 8, 8, torch.float32, timeout_s=5)
        ag_gemm(torch.randn(4 + (me == 1), 8), torch.randn(8, 8), ctx)
    elif case == "call_numel_mismatch":
        ctx = create_allreduce_context(heap, 64, torch.float32, timeout_s=5)
        allreduce(torch.randn(32 + (me == 1)), ctx)


@pytest.mark.parametrize("case, words", [
    ("rs_indivisible", "does not divide"), ("rs_decomposed_indivisible", "does not divide"),
    ("shape_mismatch", "ranks disagree"), ("dtype_mismatch", "ranks disagree"),
    ("heap_too_small", "heap too small"), ("call_shape_mismatch", "invalid arguments on rank(s) [1]"),
    ("call_numel_mismatch", "disagree on the size"),
])
def test_bad_arguments_raise_on_every_rank(pool, case, words):
    with pytest.raises(RankFailure) as ei:
        pool.run(_bad_args_job, case, timeout=60)
    assert set(ei.value.errors) == set(range(pool.world)), ei.value.errors
    assert all(words in e for e in ei.value.errors.values()), ei.value.errors


@pytest.mark.parametrize("world", [2, 3])
def test_virtual_ranks_in_one_process(world):
    """The single-GPU check's mode, run here on CPU: ranks as a grid axis over one allocation
    (compiled on CUDA when this suite runs on a GPU machine without the interpreter)."""
    from tessera.distributed import waits
    from tessera.distributed.symm import VirtualHeap
    from tessera.kernels.comm import reference as ref
    from tessera.kernels.comm.ag_gemm import ag_gemm, create_ag_gemm_context
    from tessera.kernels.comm.allreduce import allreduce, create_allreduce_context
    from tessera.kernels.comm.gemm_rs import create_gemm_rs_context, gemm_rs

    dev = "cpu" if waits.interpreted() or not torch.cuda.is_available() else "cuda"

    def on(ts):
        return [t.to(dev) for t in ts]

    heap = VirtualHeap(1 << 20, world, dev)
    ag = create_ag_gemm_context(heap, M_LOC, N, K, torch.float32, timeout_s=5)
    rs = create_gemm_rs_context(heap, world * M_LOC, N, K, torch.float32, timeout_s=5)
    ar = create_allreduce_context(heap, NUMEL, torch.float32, True, timeout_s=5)
    for it in range(2):
        g = torch.Generator().manual_seed(it)
        shards = [torch.randn(M_LOC, K, generator=g) for _ in range(world)]
        bs = [torch.randn(K, N, generator=g) for _ in range(world)]
        for r, c in enumerate(ag_gemm(on(shards), on(bs), ag)):
            assert _rel(c.cpu(), ref.ag_gemm_ref(shards, bs[r])) <= 1e-5
        a_parts = [torch.randn(world * M_LOC, K, generator=g) for _ in range(world)]
        expect = ref.gemm_rs_ref(a_parts, bs)
        for r, o in enumerate(gemm_rs(on(a_parts), on(bs), rs)):
            assert _rel(o.cpu(), expect[r]) <= 1e-5
        xs = [torch.randn(NUMEL, generator=g) for _ in range(world)]
        for y in allreduce(on(xs), ar):
            assert torch.equal(y.cpu(), ref.allreduce_ref(xs))
