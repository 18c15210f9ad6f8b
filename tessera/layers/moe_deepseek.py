"""The DeepSeek-V3 MoE block (arXiv 2412.19437, §2.1.2), checked at block level only.

Its router differs from the softmax routers of `tessera.layers.moe`: sigmoid affinities; a per-expert
bias (`e_score_correction_bias`, the auxiliary-loss-free balancing of §2.1.2) added for *choosing* experts
only, never to the weights; group-limited choice (the top `topk_group` of `n_group` expert groups, each
group scored by the sum of its two best biased affinities); weights renormalised over the chosen k and
scaled by `routed_scaling_factor`; plus always-on shared experts with no gate. The attention of
DeepSeek-V3 (MLA) is out of scope, so no DeepSeek family is registered: this block is what expert
parallelism and COMET can be tested on with DeepSeek's routing.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tessera.layers.mlp import SwiGLU
from tessera.layers.moe import Experts


class GroupLimitedRouter(nn.Module):
    def __init__(self, hidden: int, num_experts: int, top_k: int, n_group: int, topk_group: int,
                 renormalize: bool, scaling: float):
        super().__init__()
        if num_experts % n_group or not 0 < topk_group <= n_group:
            raise ValueError(f"DeepSeek router: {num_experts} experts must split into n_group={n_group} groups, "
                             f"and topk_group={topk_group} must be in [1, n_group]")
        self.weight = nn.Parameter(torch.zeros(num_experts, hidden))
        self.register_buffer("e_score_correction_bias", torch.zeros(num_experts))
        self.top_k, self.n_group, self.topk_group = top_k, n_group, topk_group
        self.renormalize, self.scaling = renormalize, scaling

    def forward(self, x: torch.Tensor):  # x [T, H] -> logits [T, E], weights [T, k] fp32, ids [T, k]
        logits = F.linear(x.float(), self.weight.float())
        scores = logits.sigmoid()
        biased = scores + self.e_score_correction_bias  # for the choice only
        T, E = biased.shape
        groups = biased.view(T, self.n_group, E // self.n_group)
        group_score = groups.topk(2, dim=-1).values.sum(-1)  # [T, n_group]
        keep = torch.zeros_like(group_score).scatter_(1, group_score.topk(self.topk_group, dim=-1).indices, 1.0)
        allowed = keep.bool()[:, :, None].expand_as(groups).reshape(T, E)
        ids = biased.masked_fill(~allowed, float("-inf")).topk(self.top_k, dim=-1).indices
        weights = scores.gather(1, ids)
        if self.renormalize:
            weights = weights / (weights.sum(-1, keepdim=True) + 1e-20)
        return logits, weights * self.scaling, ids


class DeepSeekMoEBlock(nn.Module):
    def __init__(self, hidden: int, num_experts: int, top_k: int, expert_ffn: int, n_shared: int, n_group: int,
                 topk_group: int, renormalize: bool = True, scaling: float = 1.0):
        super().__init__()
        self.gate = GroupLimitedRouter(hidden, num_experts, top_k, n_group, topk_group, renormalize, scaling)
        self.experts = Experts(num_experts, hidden, expert_ffn)
        self.shared_experts = SwiGLU(hidden, expert_ffn * n_shared)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, S, H]
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        _, weights, ids = self.gate(flat)
        out = self.experts(flat, ids, weights)
        return out.reshape(shape) + self.shared_experts(x)
