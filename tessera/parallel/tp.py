"""Tensor parallelism for the dense decoder: `shard_model(model, group)` splits a loaded
`tessera.models.LlamaForCausalLM` in place across the ranks of `group`.

Every rank must hold the same full model (same checkpoint or seed) before the call. Then, per
decoder layer, q/k/v and gate/up become `ColumnParallelLinear` (heads and FFN columns split), and
o_proj and down_proj `RowParallelLinear` (one AllReduce each, so two per layer, as in Megatron-LM).
Embeddings, norms and lm_head stay replicated, so logits are complete on every rank and greedy
decoding picks the same token everywhere. Usage (under torchrun, gloo or nccl):

    from tessera.distributed import parallel_state as ps, tp
    ps.init_from_env("gloo")
    model = tessera.models.load_model(path)
    comm = tp.shard_model(model)              # mode="torch" (dist.all_reduce) or "fused" (Triton)
    logits = model(input_ids)                 # same on every rank

The attention module is used unchanged: its per-instance head counts are divided by W.
In "fused" mode the symmetric heap lives on the model's device and, unless `heap_bytes` is given,
is sized for the AllReduce of `max_tokens` tokens per forward (`tessera generate --tp-backend fused`).
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from tessera.distributed import parallel_state as ps
from tessera.distributed.symm import ALIGN, SymmetricHeap
from tessera.kernels.comm.ag_gemm import ag_gemm, create_ag_gemm_context
from tessera.kernels.comm.allreduce import allreduce, create_allreduce_context
from tessera.kernels.comm.gemm_rs import create_gemm_rs_context, gemm_rs
from tessera.layers.mlp import SwiGLU
from tessera.layers.parallel_linear import ColumnParallelLinear, RowParallelLinear

MAX_TOKENS = 4096  # tokens per forward the fused AllReduce holds by default (a prefill of B x S counts B*S)
AR_BLOCK = 1024  # elements per AllReduce chunk: few, large chunks, one program each


def allreduce_heap_bytes(world: int, n: int, dtype: torch.dtype) -> int:
    """Heap bytes `create_allreduce_context` takes for n elements: stage [W, n] and out [n] of
    dtype, int64 signals [W, C] and [C] (C = n / AR_BLOCK chunks), plus the heap's error slot and
    the alignment of each tensor."""
    chunks = -(-n // AR_BLOCK)
    return (world + 1) * (n * torch.empty((), dtype=dtype).element_size() + chunks * 8) + 8 * ALIGN


class TPComm:
    """Group, heap and op contexts shared by all parallel linears of one model. Calls happen in the
    same order on every rank (the model's layer order), which is what epochs require."""

    def __init__(self, group=None, mode: str = "torch", heap_bytes: int = 64 << 20,
                 max_tokens: int = MAX_TOKENS, timeout_s: float | None = 60.0, device="cpu"):
        if mode not in ("torch", "fused"):
            raise ValueError(f"TPComm mode must be 'torch' or 'fused', got {mode!r}")
        self.group, self.mode, self.timeout_s = group, mode, timeout_s
        self.rank, self.world = ps.rank(group), ps.world_size(group)
        self.max_tokens, self.heap_bytes, self.device = max_tokens, heap_bytes, torch.device(device)
        self.heap, self._ar, self._ctx = None, {}, {}

    def require(self, ok: bool, msg: str) -> None:
        """Checks are on replicated config, so they fail on every rank together; still collective
        so that a rank with another config cannot leave its peers waiting."""
        ps.check_consistent("shard_model", {}, self.group, None if ok else msg)

    def _heap(self) -> SymmetricHeap:
        if self.heap is None:
            self.heap = SymmetricHeap(self.heap_bytes, self.group, self.device)  # Triton reads it where y lives
        return self.heap

    def allreduce(self, y: torch.Tensor) -> torch.Tensor:
        if self.mode == "torch":
            dist.all_reduce(y, group=ps.group_or_world(self.group))
            return y
        tokens = y.numel() // y.shape[-1]
        if tokens > self.max_tokens:  # same shapes on every rank, so every rank raises here together
            raise ValueError(f"the fused all-reduce holds {self.max_tokens} tokens per forward, this one has "
                             f"{tokens}: shard_model(..., max_tokens=...) sizes it (CLI: use --tp-backend torch)")
        if y.dtype not in self._ar:
            self._ar[y.dtype] = create_allreduce_context(
                self._heap(), self.max_tokens * y.shape[-1], y.dtype, two_shot=self.world > 2,
                timeout_s=self.timeout_s, block=AR_BLOCK)
        return allreduce(y.contiguous(), self._ar[y.dtype])

    def _context(self, kind, m, n, k, dtype):
        key = (kind, m, n, k, dtype)
        if key not in self._ctx:
            make = create_ag_gemm_context if kind == "ag" else create_gemm_rs_context
            self._ctx[key] = make(self._heap(), m, n, k, dtype, timeout_s=self.timeout_s)
        return self._ctx[key]

    def ag_gemm(self, x: torch.Tensor, w_t: torch.Tensor) -> torch.Tensor:  # [T_loc, K] @ [K, N]
        return ag_gemm(x.contiguous(), w_t, self._context("ag", x.shape[0], w_t.shape[1], x.shape[1], x.dtype))

    def gemm_rs(self, x: torch.Tensor, w_t: torch.Tensor) -> torch.Tensor:  # [T, K_loc] @ [K_loc, N]
        return gemm_rs(x.contiguous(), w_t, self._context("rs", x.shape[0], w_t.shape[1], x.shape[1], x.dtype))

    def close(self):
        if self.heap is not None:
            self.heap.close()


def shard_model(model, group=None, mode: str = "torch", **comm_kw) -> TPComm:
    """Split `model` (a LlamaForCausalLM, identical on every rank) over `group`, in place.
    Returns the TPComm (keep it alive as long as the model). Raises on every rank if the head
    counts or FFN width do not divide by the world size."""
    cfg = model.config
    if cfg.qk_norm == "proj":  # the same model on every rank: every rank raises this
        raise ValueError(f"shard_model: tensor parallelism of a {cfg.model_type} model is not implemented "
                         "(q/k norms over the whole projection)")
    if any(getattr(m, "qkv_proj", None) is not None or (isinstance(m, SwiGLU) and m.gate_up_proj is not None)
           for m in model.modules()):  # (routed experts also call their fused weights gate_up_proj)
        raise ValueError("shard_model: the model has fused projections (tessera.quant.fuse_projections); "
                         "shard it before fusing")
    p = next(model.parameters())
    comm_kw.setdefault("device", p.device)
    if mode == "fused":
        n = comm_kw.get("max_tokens", MAX_TOKENS) * model.config.hidden_size
        comm_kw.setdefault("heap_bytes", allreduce_heap_bytes(ps.world_size(group), n, p.dtype))
    comm = TPComm(group, mode, **comm_kw)
    W = comm.world
    comm.require(cfg.num_attention_heads % W == 0 and cfg.num_key_value_heads % W == 0,
                 f"tensor parallelism over {W} ranks needs num_attention_heads={cfg.num_attention_heads} "
                 f"and num_key_value_heads={cfg.num_key_value_heads} divisible by {W}")
    for layer in model.model.layers:
        attn, mlp = layer.self_attn, layer.mlp
        for name in ("q_proj", "k_proj", "v_proj"):
            setattr(attn, name, ColumnParallelLinear.from_linear(getattr(attn, name), comm))
        attn.o_proj = RowParallelLinear.from_linear(attn.o_proj, comm)
        attn.n_heads //= W
        attn.n_kv //= W
        if not isinstance(mlp, SwiGLU):
            continue  # routed experts stay whole here: expert parallelism (parallel/ep.py) shards them
        mlp.gate_proj = ColumnParallelLinear.from_linear(mlp.gate_proj, comm)
        mlp.up_proj = ColumnParallelLinear.from_linear(mlp.up_proj, comm)
        mlp.down_proj = RowParallelLinear.from_linear(mlp.down_proj, comm)
    model.tp_comm = comm
    return comm
