"""Tensor parallelism on a tiny random Llama/Qwen2-style model over 2 gloo processes.

Each rank builds the same model (same seed), keeps an unsharded copy (what one process computes)
and shards the other with `tessera.parallel.tp.shard_model`. Asserted: logits within 1e-5 (fp32;
row-parallel layers sum K in two halves, so not bitwise) and the same 6 greedy tokens.
"""

import copy

import pytest
import torch

from tessera.distributed.testing import RankFailure, shared_pool

pytestmark = pytest.mark.dist


@pytest.fixture(scope="module")
def pool():
    return shared_pool(2)


def _tiny(kv_heads=2):
    from tessera.config import ModelConfig
    from tessera.models import LlamaForCausalLM

    cfg = ModelConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=kv_heads, head_dim=8,
                      attention_bias=True, model_type="qwen2")
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg).eval()


@torch.no_grad()
def _greedy(model, ids, steps):
    for _ in range(steps):
        nxt = model(ids)[:, -1].argmax(-1, keepdim=True)  # full recompute: no KV cache needed
        ids = torch.cat([ids, nxt], 1)
    return ids


def _tp_job(mode, steps):
    from tessera.parallel import tp

    full = _tiny()
    sharded = copy.deepcopy(full)
    comm = tp.shard_model(sharded, mode=mode, heap_bytes=4 << 20, max_tokens=64, timeout_s=20)
    ids = torch.tensor([[1, 5, 9, 2, 7], [3, 3, 8, 1, 0]])
    with torch.no_grad():
        diff = (sharded(ids) - full(ids)).abs().max().item()
    same = torch.equal(_greedy(sharded, ids, steps), _greedy(full, ids, steps))
    n_local = sharded.model.layers[0].mlp.gate_proj.weight.shape[0]
    comm.close()
    return diff, same, n_local


@pytest.mark.parametrize("mode, steps", [("torch", 6), ("fused", 1)])
def test_tp2_matches_single_process(pool, mode, steps):
    for diff, same, n_local in pool.run(_tp_job, mode, steps, timeout=240):
        assert n_local == 24  # the FFN really is split
        assert diff <= 1e-5, diff
        assert same


def _seq_parallel_mlp_job():
    """SwiGLU with tokens split over ranks: AG-GEMM for gate/up, GEMM-RS for down."""
    import torch.nn.functional as F

    from tessera.distributed import parallel_state as ps
    from tessera.layers.parallel_linear import ColumnParallelLinear, RowParallelLinear
    from tessera.parallel.tp import TPComm

    me, W = ps.rank(), ps.world_size()
    mlp = _tiny().model.layers[0].mlp
    comm = TPComm(mode="fused", heap_bytes=4 << 20, timeout_s=20)
    gate = ColumnParallelLinear.from_linear(mlp.gate_proj, comm, gather_tokens=True)
    up = ColumnParallelLinear.from_linear(mlp.up_proj, comm, gather_tokens=True)
    down = RowParallelLinear.from_linear(mlp.down_proj, comm, scatter_tokens=True)
    errs = []
    for it in range(2):
        x = torch.randn(6 * W, 32, generator=torch.Generator().manual_seed(it))  # [T, hidden]
        x_loc = x.chunk(W)[me]  # [T/W, hidden]
        y_loc = down(F.silu(gate(x_loc)) * up(x_loc))  # [T/W, hidden]
        with torch.no_grad():
            errs.append((y_loc - mlp(x).chunk(W)[me]).abs().max().item())
    comm.close()
    return errs


def test_sequence_parallel_mlp_uses_fused_ops(pool):
    for errs in pool.run(_seq_parallel_mlp_job, timeout=240):
        assert max(errs) <= 1e-5, errs


def _bad_heads_job():
    from tessera.parallel import tp

    tp.shard_model(_tiny(kv_heads=1))


def test_indivisible_heads_raise_on_every_rank(pool):
    with pytest.raises(RankFailure) as ei:
        pool.run(_bad_heads_job, timeout=60)
    assert set(ei.value.errors) == {0, 1}
    assert all("num_key_value_heads=1" in e for e in ei.value.errors.values())


def test_fused_projections_are_refused_before_any_communicator():
    from kv_helpers import tiny_model

    from tessera.parallel.tp import shard_model
    from tessera.quant import fuse_projections

    model = tiny_model()
    fuse_projections(model)
    with pytest.raises(ValueError, match="fused projections"):
        shard_model(model)  # no process group exists: the check must come first


def test_whole_projection_qk_norms_are_refused_before_any_communicator():
    from tessera.config import ModelConfig
    from tessera.models import CausalLM
    from tessera.parallel.tp import shard_model

    cfg = ModelConfig(vocab_size=20, hidden_size=16, intermediate_size=8, num_hidden_layers=1, num_attention_heads=2,
                      num_key_value_heads=2, head_dim=8, model_type="olmoe", num_experts=4, num_experts_per_tok=2,
                      moe_intermediate_size=8, qk_norm="proj")
    with pytest.raises(ValueError, match="tensor parallelism of a olmoe model is not implemented"):
        shard_model(CausalLM(cfg))


@pytest.mark.parametrize("world, n", [(2, 5 * 256), (4, 4096 * 32 + 7)])
def test_fused_heap_size_fits_the_allreduce_exactly_enough(world, n):
    from tessera.distributed.symm import VirtualHeap
    from tessera.kernels.comm.allreduce import create_allreduce_context
    from tessera.parallel.tp import AR_BLOCK, allreduce_heap_bytes

    need = allreduce_heap_bytes(world, n, torch.float32)
    create_allreduce_context(VirtualHeap(need, world), n, torch.float32, block=AR_BLOCK)
    assert need - 4 * (world + 1) * n < 16 << 10  # no more than padding on top of stage + out


def _too_many_tokens_job():
    from tessera.parallel import tp

    model = _tiny()
    comm = tp.shard_model(model, mode="fused", max_tokens=4, timeout_s=20)
    try:
        model(torch.zeros(1, 5, dtype=torch.long))
    finally:
        comm.close()


def test_fused_forward_over_max_tokens_is_refused_on_every_rank(pool):
    with pytest.raises(RankFailure) as ei:
        pool.run(_too_many_tokens_job, timeout=60)
    assert set(ei.value.errors) == {0, 1}
    assert all("holds 4 tokens per forward, this one has 5" in e for e in ei.value.errors.values())
