"""Expert parallelism over real gloo processes: dispatch / combine against a single-process reference, and
an expert-parallel MoE model against the same model in one process."""

import pytest
import torch

from tessera.distributed.testing import RankFailure, shared_pool

pytestmark = pytest.mark.dist


def _inputs(rank: int, it: int, E: int, H: int = 5, k: int = 2):
    """Rank `rank`'s tokens at iteration `it`: a random count (0 included), random routes, dropped slots."""
    g = torch.Generator().manual_seed(1000 * it + rank)
    T = [0, 7, 3, 12][(rank + it) % 4]
    x = torch.randn(T, H, generator=g)
    ids = torch.stack([torch.randperm(E, generator=g)[:k] for _ in range(T)]) if T else torch.zeros(0, k).long()
    if it == 1 and T:
        ids[:, 0] = 0  # every token to expert 0: one expert gets everything, others little or nothing
    if T > 2:
        ids[1, 1] = -1  # a dropped slot sends nothing
    return x, ids, torch.rand(T, k, generator=g)


def _dispatch_job(E: int, iters: int, impl: str = "ep_dispatch"):
    import importlib

    from tessera.distributed import parallel_state as ps

    mod = importlib.import_module(f"tessera.parallel.{impl}")
    dispatch, combine = mod.dispatch, mod.combine

    W, r = ps.world_size(), ps.rank()
    local = E // W
    for it in range(iters):  # the same buffers and groups, no reset between calls
        x, ids, w = _inputs(r, it, E)
        rows, weights, layout = dispatch(x, ids, w, E)
        # reference: for each local expert, each source rank's pairs routed there, in (token, slot) order
        want_rows, want_w = [], []
        for e in range(r * local, (r + 1) * local):
            for s in range(W):
                xs, ids_s, ws = _inputs(s, it, E)
                for t, j in (ids_s == e).nonzero().tolist():
                    want_rows.append(xs[t])
                    want_w.append(ws[t, j])
        assert torch.equal(rows, torch.stack(want_rows) if want_rows else rows.new_zeros(0, x.shape[1]))
        assert torch.equal(weights, torch.stack(want_w) if want_w else weights.new_zeros(0))
        assert layout.expert_offsets[-1] == len(rows)
        out = combine(rows, layout)  # identity experts: each token gets x * (sum of its kept weights)
        expect = x * (w * (ids >= 0)).sum(1, keepdim=True)
        torch.testing.assert_close(out, expect, atol=1e-6, rtol=1e-6)
    return True


@pytest.mark.parametrize("impl", ["ep_dispatch", "ep_decomposed"])
@pytest.mark.parametrize("world, E", [(2, 4), (4, 8)])
def test_dispatch_and_combine_match_the_reference(world, E, impl):
    assert all(shared_pool(world).run(_dispatch_job, E, 3, impl, timeout=120))


def _overlapped_job(E: int, iters: int):
    """The decomposed path that runs the experts per source as rows land equals dispatch -> experts -> combine,
    with an expert function that depends on the expert (so wrong offsets per source would show)."""
    from tessera.distributed import parallel_state as ps
    from tessera.parallel import ep_decomposed, ep_dispatch, ep_pipelined

    def experts_fn(rows, offsets):  # rows [n, H] grouped by local expert -> rows * (local expert + 1)
        scale = torch.repeat_interleave(torch.arange(1, len(offsets)).float(), offsets.diff())
        return rows * scale[:, None]

    for it in range(iters):
        x, ids, w = _inputs(ps.rank(), it, E)
        rows, _, layout = ep_dispatch.dispatch(x, ids, w, E)
        want = ep_dispatch.combine(experts_fn(rows, layout.expert_offsets), layout)
        got, _ = ep_decomposed.run_overlapped(x, ids, w, E, experts_fn, timeout_s=20)
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)
        for chunks in (1, 2, 3):  # token chunks (a rank may have fewer tokens than chunks, or none)
            got, layouts = ep_pipelined.run_pipelined(x, ids, w, E, experts_fn, chunks=chunks)
            torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)
            assert len(layouts) == chunks and sum(sum(lo.send_counts) for lo in layouts) == int((ids >= 0).sum())
    return True


@pytest.mark.parametrize("world, E", [(2, 4), (4, 8)])
def test_overlapped_decomposed_and_pipelined_paths_equal_dispatch_experts_combine(world, E):
    assert all(shared_pool(world).run(_overlapped_job, E, 3, timeout=120))


def _ep_model_job(backend: str):
    from tessera.config import ModelConfig
    from tessera.distributed import parallel_state as ps
    from tessera.models import CausalLM
    from tessera.parallel.ep import shard_experts

    torch.manual_seed(0)  # the same model on every rank
    cfg = ModelConfig(vocab_size=40, hidden_size=16, intermediate_size=24, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=1, head_dim=8, model_type="qwen2_moe", num_experts=4, num_experts_per_tok=2,
                      moe_intermediate_size=12, shared_expert_intermediate_size=8, norm_topk_prob=False)
    model = CausalLM(cfg).eval()
    with torch.no_grad():
        for b in model.moe_blocks().values():
            b.gate.weight.normal_(0, 1.0)
    ids = torch.randint(0, 40, (1 + ps.rank(), 6), generator=torch.Generator().manual_seed(ps.rank()))
    with torch.no_grad():
        want = model(ids)
        comm = shard_experts(model, backend=backend, max_tokens=16)
        got = model(ids)  # each rank its own batch (different sizes): data-parallel attention
    comm.close()
    stats = [b.stats for b in model.moe_blocks().values()]
    return (got - want).abs().max().item(), [(s.sent.tolist(), s.received.tolist(), s.bytes_out) for s in stats]


@pytest.mark.parametrize("backend", ["torch", "decomposed", "pipelined", "fused", "comet"])
def test_expert_parallel_model_matches_one_process(backend):
    (d0, s0), (d1, s1) = shared_pool(2).run(_ep_model_job, backend, timeout=180)
    assert d0 < 1e-5 and d1 < 1e-5
    for (sent0, recv0, bytes0), (sent1, recv1, bytes1) in zip(s0, s1):  # per layer, what one sent the other got
        assert sent0[1] == recv1[0] and sent1[0] == recv0[1] and sent0[0] == recv0[0]
        assert bytes0 == sent0[1] * 16 * 4 and bytes1 == sent1[0] * 16 * 4  # rows to the peer x H x fp32
        assert sum(sent0) == 6 * 2  # rank 0: one sequence of 6 tokens, top-2 (no slot dropped)


def _tp_ep_model_job():
    """tp=2 x ep=2 on 4 ranks: attention sharded over the "tp" group, experts over the "ep" group."""
    from tessera.config import ModelConfig
    from tessera.distributed import parallel_state as ps
    from tessera.models import CausalLM
    from tessera.parallel import tp
    from tessera.parallel.ep import shard_experts

    ps.initialize(tp=2, ep=2)
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=40, hidden_size=16, intermediate_size=24, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=2, head_dim=8, model_type="qwen2_moe", num_experts=4, num_experts_per_tok=2,
                      moe_intermediate_size=12, shared_expert_intermediate_size=8, norm_topk_prob=False,
                      decoder_sparse_step=2)  # layer 0 dense (its MLP tensor-parallel), layer 1 MoE
    model = CausalLM(cfg).eval()
    ids = torch.randint(0, 40, (2, 6), generator=torch.Generator().manual_seed(ps.rank() // 2))  # per TP group
    try:
        with torch.no_grad():
            want = model(ids)
            tp.shard_model(model, group=ps.group("tp"))
            shard_experts(model, group=ps.group("ep"))
            got = model(ids)
    finally:
        ps.destroy_groups()
    layer = model.model.layers[1].mlp
    return (got - want).abs().max().item(), layer.experts.num_experts, ps.world_size("world")


def test_tensor_and_expert_parallel_together_match_one_process():
    for diff, local_experts, world in shared_pool(4).run(_tp_ep_model_job, timeout=180):
        assert diff < 1e-5 and local_experts == 2 and world == 4


def _bad_world_job():
    from tessera.distributed import parallel_state as ps

    ps.initialize(tp=2, ep=2)


def test_a_layout_that_does_not_match_the_world_is_refused_on_every_rank():
    with pytest.raises(RankFailure) as ei:
        shared_pool(2).run(_bad_world_job, timeout=60)
    assert all("tp=2 x ep=2 needs 4 ranks, but 2 were started" in e for e in ei.value.errors.values())


def _bad_split_job():
    from tessera.config import ModelConfig
    from tessera.models import CausalLM
    from tessera.parallel.ep import shard_experts

    cfg = ModelConfig(vocab_size=10, hidden_size=8, intermediate_size=8, num_hidden_layers=1, num_attention_heads=1,
                      num_key_value_heads=1, head_dim=8, model_type="mixtral", num_experts=3, num_experts_per_tok=1,
                      moe_intermediate_size=8)
    shard_experts(CausalLM(cfg))


def test_experts_that_do_not_divide_are_refused_on_every_rank():
    with pytest.raises(RankFailure) as ei:
        shared_pool(2).run(_bad_split_job, timeout=60)
    assert set(ei.value.errors) == {0, 1}
    assert all("num_experts=3 divisible by 2" in e for e in ei.value.errors.values())


def _fused_job(E: int, iters: int, stagger: bool):
    import time

    from tessera.distributed import parallel_state as ps
    from tessera.distributed.symm import SymmetricHeap
    from tessera.kernels.moe.ep_a2a import (
        combine_fused,
        create_ep_a2a_context,
        dispatch_fused,
        ep_a2a_heap_bytes,
    )
    from tessera.parallel.ep_dispatch import combine, dispatch

    W, r = ps.world_size(), ps.rank()
    heap = SymmetricHeap(ep_a2a_heap_bytes(W, 12, 2, 5, E, torch.float32))
    if stagger:  # ranks start the kernels at different times: a missing wait would read stale rows and fail
        barrier = heap.barrier
        heap.barrier = lambda *a, **kw: (barrier(*a, **kw), time.sleep(0.2 * (W - 1 - r)))
    ctx = create_ep_a2a_context(heap, max_tokens=12, top_k=2, hidden=5, num_experts=E, timeout_s=20)
    try:
        for it in range(iters):  # epochs, no reset between calls
            x, ids, w = _inputs(r, it, E)
            rows, weights, layout = dispatch_fused(x, ids, w, ctx)
            ref_rows, ref_w, ref_layout = dispatch(x, ids, w, E)
            assert torch.equal(rows, ref_rows) and torch.equal(weights, ref_w)
            y = rows * 2.0 + 1.0  # any per-row function of the rows
            assert torch.equal(combine_fused(y, layout, ctx), combine(y, ref_layout))
    finally:
        heap.close()
    return True


@pytest.mark.parametrize("world, E", [(2, 4), (4, 8)])
def test_fused_dispatch_and_combine_equal_the_torch_path(world, E):
    assert all(shared_pool(world).run(_fused_job, E, 3, world == 2, timeout=240))


def _fused_errors_job(case: str):
    from tessera.distributed import parallel_state as ps
    from tessera.distributed.symm import SymmetricHeap
    from tessera.kernels.moe.ep_a2a import create_ep_a2a_context, dispatch_fused

    heap = SymmetricHeap(1 << 16)
    try:
        if case == "heap too small":
            create_ep_a2a_context(heap, max_tokens=4096, top_k=2, hidden=64, num_experts=4)
        if case == "hidden sizes differ":
            create_ep_a2a_context(heap, max_tokens=4, top_k=2, hidden=5 + ps.rank(), num_experts=4)
        ctx = create_ep_a2a_context(heap, max_tokens=4, top_k=2, hidden=5, num_experts=4, timeout_s=10)
        T = 6 if ps.rank() == 1 else 2  # one rank over capacity: every rank must raise, none may hang
        dispatch_fused(torch.zeros(T, 5), torch.zeros(T, 2).long(), torch.ones(T, 2), ctx)
    finally:
        heap.close()


@pytest.mark.parametrize("case, message", [("heap too small", "the heap holds"),
                                           ("hidden sizes differ", "ranks disagree"),
                                           ("over capacity", "ep dispatch: invalid arguments on rank(s) [1]")])
def test_fused_errors_raise_on_every_rank(case, message):
    with pytest.raises(RankFailure) as ei:
        shared_pool(2).run(_fused_errors_job, case, timeout=60)
    assert set(ei.value.errors) == {0, 1}
    assert all(message in e for e in ei.value.errors.values())


def _dead_rank_job(tag: str):
    """Rank 1 dies inside dispatch, after the barrier and before its kernel raises any flag: rank 0's kernel
    must give up within its timeout and name the flag it waited on."""
    import glob
    import os

    from tessera.distributed import parallel_state as ps
    from tessera.distributed.symm import SymmetricHeap
    from tessera.kernels.moe import ep_a2a

    heap = SymmetricHeap(ep_a2a.ep_a2a_heap_bytes(2, 4, 2, 5, 4, torch.float32))
    ctx = ep_a2a.create_ep_a2a_context(heap, max_tokens=4, top_k=2, hidden=5, num_experts=4, timeout_s=3)
    if ps.rank() == 1:
        class _Dies:  # the kernel launch of this rank: the process ends instead
            def __getitem__(self, grid):
                return lambda *a, **kw: os._exit(17)

        ep_a2a._dispatch_kernel = _Dies()
    try:
        x, ids, w = _inputs(ps.rank(), 0, 4)
        ep_a2a.dispatch_fused(x[:4], ids[:4], w[:4], ctx)
    finally:
        heap.close()
        left = glob.glob("/dev/shm/tessera_*")
    return left


def test_a_rank_that_dies_mid_dispatch_fails_the_others_within_their_timeout():
    from tessera.distributed.testing import RankPool

    pool = RankPool(2, gloo_timeout_s=10)  # its own pool: a rank of it dies
    before = set(__import__("glob").glob("/dev/shm/tessera_*"))
    try:
        t0 = __import__("time").monotonic()
        with pytest.raises(RankFailure) as ei:
            pool.run(_dead_rank_job, "dead", timeout=60)
        elapsed = __import__("time").monotonic() - t0
    finally:
        pool.stop()
    errors = ei.value.errors
    assert "exit code 17" in errors[1]
    assert "DistTimeoutError" in errors[0] and "rank 0 timed out" in errors[0] and "ep.sig_d" in errors[0], errors[0]
    assert elapsed < 40
    assert set(__import__("glob").glob("/dev/shm/tessera_*")) <= before  # nothing of this run left behind


@pytest.mark.parametrize("world, E, dtype", [(2, 4, torch.float32), (3, 6, torch.float32), (2, 4, torch.bfloat16)])
def test_virtual_ranks_dispatch_and_combine_in_one_process(world, E, dtype):
    """The single-GPU check's mode on the CPU interpreter: W ranks as grid axis 1 over one allocation, three
    calls without reset, against the per-rank reference (compiled on CUDA by scripts/gpu_checks/dist.py)."""
    from tessera.distributed.symm import VirtualHeap
    from tessera.kernels.moe.ep_a2a import (
        combine_fused_virtual,
        create_ep_a2a_context,
        dispatch_fused_virtual,
        ep_a2a_heap_bytes,
    )

    heap = VirtualHeap(ep_a2a_heap_bytes(world, 12, 2, 5, E, dtype), world)
    ctx = create_ep_a2a_context(heap, max_tokens=12, top_k=2, hidden=5, num_experts=E, dtype=dtype, timeout_s=10)
    local = E // world
    tol = 1e-6 if dtype == torch.float32 else 1e-2  # combine: fp32 within 1e-6, bf16 within 1e-2
    for it in range(3):
        ins = [(x.to(dtype), ids, w) for x, ids, w in (_inputs(r, it, E) for r in range(world))]
        out = dispatch_fused_virtual([i[0] for i in ins], [i[1] for i in ins], [i[2] for i in ins], ctx)
        for r, (rows, weights, _) in enumerate(out):
            want = [(xs[t], ws[t, j]) for e in range(r * local, (r + 1) * local) for xs, ids_s, ws in ins
                    for t, j in (ids_s == e).nonzero().tolist()]
            assert torch.equal(rows, torch.stack([w[0] for w in want]) if want else rows.new_zeros(0, 5))
            assert torch.equal(weights, torch.stack([w[1] for w in want]) if want else weights.new_zeros(0))
        got = combine_fused_virtual([o[0] * 2.0 + 1.0 for o in out], [o[2] for o in out], ctx)
        for (x, ids, w), y in zip(ins, got):
            want = ((x.float() * 2.0 + 1.0)[:, None] * (w * (ids >= 0))[..., None]).sum(1)
            torch.testing.assert_close(y.float(), want, atol=tol, rtol=tol)
