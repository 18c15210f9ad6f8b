"""Mixture-of-Experts FFN: a softmax top-k router, routed SwiGLU experts, an optional shared expert.

Routing follows transformers' Mixtral / Qwen2-MoE / OLMoE routers: logits from a bias-free linear,
softmax in fp32, top-k, renormalised to sum to 1 when the family says so (`norm_topk_prob`), weights
cast back to the activation dtype. The experts are stored fused, as transformers >= 5 does
(`gate_up_proj [E, 2I, H]` with gate rows first, `down_proj [E, H, I]`), so a grouped GEMM reads one
tensor; the loader converts the per-expert checkpoint layout.

How the experts run is a choice of `tessera.layers.experts` (a reference loop, a sorted CPU path,
torch's grouped matmul, a Triton grouped GEMM); every backend gives the same result.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tessera.config import ModelConfig
from tessera.layers import experts as X
from tessera.layers.mlp import SwiGLU


class Router(nn.Module):
    """Softmax top-k gate (Shazeer et al. 2017; Mixtral, arXiv 2401.04088)."""

    def __init__(self, hidden: int, num_experts: int, top_k: int, renormalize: bool):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(num_experts, hidden))
        self.top_k, self.renormalize = top_k, renormalize

    def forward(self, x: torch.Tensor):  # x [T, H] -> logits [T, E], weights [T, k] (x.dtype), ids [T, k]
        logits = F.linear(x, self.weight)
        probs = torch.softmax(logits.float(), dim=-1)
        weights, ids = torch.topk(probs, self.top_k, dim=-1)
        if self.renormalize:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        return logits, weights.to(x.dtype), ids


class Experts(nn.Module):
    """E SwiGLU experts as two fused weight tensors."""

    def __init__(self, num_experts: int, hidden: int, ffn: int):
        super().__init__()
        self.gate_up_proj = nn.Parameter(torch.empty(num_experts, 2 * ffn, hidden))  # [E, 2I, H]
        self.down_proj = nn.Parameter(torch.empty(num_experts, hidden, ffn))  # [E, H, I]
        nn.init.normal_(self.gate_up_proj, std=hidden ** -0.5)
        nn.init.normal_(self.down_proj, std=ffn ** -0.5)
        self.backend = "auto"  # see tessera.layers.experts.BACKENDS
        self.capacity_factor = X.CAPACITY_FACTOR  # slots per expert of the training-only `capacity` backend

    @property
    def num_experts(self) -> int:
        return self.gate_up_proj.shape[0]

    def forward(self, x, ids, weights):  # x [T, H], ids / weights [T, k] -> [T, H]
        if torch.compiler.is_compiling() and self.backend != "capacity":  # exact experts in a compiled graph
            if self.backend == "gathered" or (self.backend == "auto" and X.use_gathered(ids.numel(), self.gate_up_proj, self.down_proj)):
                return X.experts_gathered(x, ids, weights, self.gate_up_proj, self.down_proj)  # fused by Inductor
            return X.routed_experts(x, ids, weights, self.gate_up_proj, self.down_proj, self.backend)
        return X.run(self.backend, x, ids, weights, self.gate_up_proj, self.down_proj, self.capacity_factor)


class RoutingStats:
    """Tokens routed to each expert, summed over forward calls until `reset()` (a CPU tensor [E])."""

    def __init__(self, num_experts: int):
        self.counts = torch.zeros(num_experts, dtype=torch.long, device="cpu")  # explicit: models are built on meta

    def add(self, ids: torch.Tensor) -> None:  # ids [T, k]
        # one_hot, not bincount: a static shape, so a compiled decode step keeps the statistics in its graph
        self.counts += F.one_hot(ids.flatten(), len(self.counts)).sum(0).cpu()

    def reset(self) -> None:
        self.counts.zero_()

    def balancedness(self) -> float:
        """mean / max tokens per expert: 1.0 is perfectly even, 1/E is everything on one expert."""
        m = int(self.counts.max())
        return float(self.counts.float().mean()) / m if m else 1.0


class MoEBlock(nn.Module):
    """The FFN of an MoE layer: routed experts plus, for Qwen2-MoE, a sigmoid-gated shared expert."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        E, H = cfg.num_experts, cfg.hidden_size
        self.gate = Router(H, E, cfg.num_experts_per_tok, cfg.norm_topk_prob)
        self.experts = Experts(E, H, cfg.moe_intermediate_size)
        if cfg.shared_expert_intermediate_size:
            self.shared_expert = SwiGLU(H, cfg.shared_expert_intermediate_size)
            self.shared_expert_gate = nn.Linear(H, 1, bias=False)
        else:
            self.shared_expert = self.shared_expert_gate = None
        self.stats = RoutingStats(E)
        self.last_router_logits: torch.Tensor | None = None  # [T, E], kept only while training (aux loss)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, S, H]
        shape = x.shape
        x = x.reshape(-1, shape[-1])  # [T, H]
        weights, ids = self.route(x)
        return self.add_shared(x, self.experts(x, ids, weights)).reshape(shape)

    # the steps of forward, for runtimes that run the routed experts elsewhere (disaggregated experts)
    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # x [T, H] -> weights, ids [T, k]
        logits, weights, ids = self.gate(x)
        self.last_router_logits = logits if self.training else None
        if not self.training:
            self.stats.add(ids)
        return weights, ids

    def add_shared(self, x: torch.Tensor, routed: torch.Tensor) -> torch.Tensor:  # [T, H] each -> [T, H]
        if self.shared_expert is None:
            return routed
        return routed + torch.sigmoid(self.shared_expert_gate(x)) * self.shared_expert(x)


def load_balancing_loss(router_logits: torch.Tensor, top_k: int) -> torch.Tensor:
    """Switch Transformer's auxiliary loss (Fedus et al., arXiv 2101.03961, eq. 4), top-k form as in
    transformers' `load_balancing_loss_func`: E * sum_e (fraction of routed slots to e) * (mean prob of e).
    router_logits [T, E]; 1.0 when routing is perfectly even."""
    E = router_logits.shape[-1]
    probs = torch.softmax(router_logits.float(), dim=-1)  # [T, E]
    chosen = F.one_hot(torch.topk(probs, top_k, dim=-1).indices, E).float().sum(1)  # [T, E]
    return E * (chosen.mean(0) / top_k * probs.mean(0)).sum()
