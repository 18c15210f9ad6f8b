"""Expert parallelism: the routed experts of every MoE layer sharded over a group of ranks.

    shard_experts(model, group)      # in place, the same model on every rank before the call

Each rank keeps E / W experts (rank r: experts r E/W .. (r+1) E/W - 1); the router and Qwen2-MoE's shared
expert stay replicated, so every rank routes its own tokens, dispatches the (token, slot) pairs to the
experts' owners, runs its local experts over what it received, and combines the results at home with the
routing weights (`tessera.parallel.ep_dispatch`). Attention is untouched: each rank serves its own
sequences (data parallel), as in DeepSpeed-MoE and Megatron-Core's expert parallelism.
"""

from __future__ import annotations

import torch
from torch import nn

from tessera.dist import parallel_state as ps
from tessera.layers import experts as X
from tessera.layers.moe import Experts, MoEBlock
from tessera.parallel.ep_dispatch import combine, dispatch


class EPMoEBlock(nn.Module):
    def __init__(self, block: MoEBlock, group=None):
        super().__init__()
        W, r = ps.world_size(group), ps.rank(group)
        E = block.experts.num_experts
        if E % W:
            raise ValueError(f"expert parallelism over {W} ranks needs the expert count ({E}) divisible by {W}")
        local = E // W
        self.group, self.num_experts = group, E
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
        rows, _, layout = dispatch(flat, ids, weights, self.num_experts, self.group)
        y = X.grouped_swiglu(rows, layout.expert_offsets, self.experts.gate_up_proj, self.experts.down_proj)
        out = combine(y, layout, self.group)
        if self.shared_expert is not None:
            out = out + torch.sigmoid(self.shared_expert_gate(flat)) * self.shared_expert(flat)
        return out.reshape(shape)


def shard_experts(model, group=None) -> int:
    """Replace every MoE block of `model` by its expert-parallel version; returns how many. Raises the same
    one-line ValueError on every rank when the experts do not divide over the group."""
    blocks = model.moe_blocks()
    if not blocks:
        raise ValueError("expert parallelism needs an MoE model; this one has no routed layers")
    W = ps.world_size(group)
    if model.config.num_experts % W:
        raise ValueError(f"expert parallelism over {W} ranks needs num_experts={model.config.num_experts} "
                         f"divisible by {W}")
    for i, block in blocks.items():
        model.model.layers[i].mlp = EPMoEBlock(block, group)
    return len(blocks)
