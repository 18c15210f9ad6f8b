"""Expert parallelism: the routed experts of every MoE layer sharded over a group of ranks.

    shard_experts(model, group, backend="torch" | "fused")   # in place, the same model on every rank

Each rank keeps E / W experts (rank r: experts r E/W .. (r+1) E/W - 1); the router and Qwen2-MoE's shared
expert stay replicated, so every rank routes its own tokens, dispatches the (token, slot) pairs to the
experts' owners, runs its local experts over what it received, and combines the results at home with the
routing weights. Attention is untouched: each rank serves its own sequences (data parallel), as in
DeepSpeed-MoE and Megatron-Core's expert parallelism. The dispatch is `torch.distributed`'s all-to-all
(`tessera.parallel.ep_dispatch`) or the Triton kernels over the symmetric heap
(`tessera.kernels.moe.ep_a2a`, one heap and one set of buffers for all layers, sized for `max_tokens`
tokens per rank and forward).
"""

from __future__ import annotations

import torch
from torch import nn

from tessera.distributed import parallel_state as ps
from tessera.layers import experts as X
from tessera.layers.moe import Experts, MoEBlock
from tessera.parallel import ep_dispatch

BACKENDS = ("torch", "fused")
MAX_TOKENS = 4096  # per rank and forward, for the fused buffers (a prefill of more is refused on every rank)


class EPComm:
    """The group and the dispatch implementation every expert-parallel block of one model shares."""

    def __init__(self, group, backend: str, ctx=None):
        self.group, self.backend, self.ctx = group, backend, ctx

    def dispatch(self, x, ids, weights, num_experts):
        if self.backend == "fused":
            from tessera.kernels.moe.ep_a2a import dispatch_fused

            return dispatch_fused(x, ids, weights, self.ctx)
        return ep_dispatch.dispatch(x, ids, weights, num_experts, self.group)

    def combine(self, rows, layout):
        if self.backend == "fused":
            from tessera.kernels.moe.ep_a2a import combine_fused

            return combine_fused(rows, layout, self.ctx)
        return ep_dispatch.combine(rows, layout, self.group)

    def close(self):
        if self.ctx is not None:
            self.ctx.heap.close()


class EPMoEBlock(nn.Module):
    def __init__(self, block: MoEBlock, comm: EPComm):
        super().__init__()
        W, r = ps.world_size(comm.group), ps.rank(comm.group)
        E = block.experts.num_experts
        local = E // W
        self.comm, self.num_experts = comm, E
        self.gate, self.stats = block.gate, block.stats
        self.shared_expert, self.shared_expert_gate = block.shared_expert, block.shared_expert_gate
        src = block.experts
        self.experts = Experts(local, src.gate_up_proj.shape[2], src.down_proj.shape[2]).to(src.gate_up_proj)
        with torch.no_grad():  # this rank's slice of the experts
            self.experts.gate_up_proj.copy_(src.gate_up_proj[r * local:(r + 1) * local])
            self.experts.down_proj.copy_(src.down_proj[r * local:(r + 1) * local])

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, S, H]
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        _, weights, ids = self.gate(flat)
        self.stats.add(ids)
        rows, _, layout = self.comm.dispatch(flat, ids, weights, self.num_experts)
        y = X.grouped_swiglu(rows, layout.expert_offsets, self.experts.gate_up_proj, self.experts.down_proj)
        out = self.comm.combine(y, layout)
        if self.shared_expert is not None:
            out = out + torch.sigmoid(self.shared_expert_gate(flat)) * self.shared_expert(flat)
        return out.reshape(shape)


def shard_experts(model, group=None, backend: str = "torch", max_tokens: int = MAX_TOKENS,
                  timeout_s: float | None = 60.0) -> EPComm:
    """Replace every MoE block of `model` by its expert-parallel version; returns the shared EPComm (keep it
    alive with the model; `model.ep_comm` holds it). Raises the same one-line ValueError on every rank when
    the experts do not divide over the group or the model has no routed layers."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown expert-parallel backend {backend!r}; choose one of {BACKENDS}")
    blocks, cfg = model.moe_blocks(), model.config
    if not blocks:
        raise ValueError("expert parallelism needs an MoE model; this one has no routed layers")
    W = ps.world_size(group)
    if cfg.num_experts % W:
        raise ValueError(f"expert parallelism over {W} ranks needs num_experts={cfg.num_experts} divisible by {W}")
    ctx = None
    if backend == "fused":
        from tessera.distributed.symm import SymmetricHeap
        from tessera.kernels.moe.ep_a2a import create_ep_a2a_context, ep_a2a_heap_bytes

        p = next(model.parameters())
        args = (max_tokens, cfg.num_experts_per_tok, cfg.hidden_size, cfg.num_experts, p.dtype)
        heap = SymmetricHeap(ep_a2a_heap_bytes(W, *args), group, device=p.device)
        ctx = create_ep_a2a_context(heap, *args, timeout_s=timeout_s)
    comm = EPComm(group, backend, ctx)
    for i, block in blocks.items():
        model.model.layers[i].mlp = EPMoEBlock(block, comm)
    model.ep_comm = comm
    return comm
