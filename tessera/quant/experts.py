"""Routed experts as one linear per expert and projection, so the int8 / int4 module swap reaches them.

`quantize_model` first turns each fused `Experts` ([E, 2I, H] and [E, H, I] tensors) into `LinearExperts`
(E gate/up linears [2I, H] and E down linears [H, I], exactly the same numbers), then quantizes every
linear as usual. The forward groups tokens by expert like the `sorted` backend and calls each
non-empty expert's two linears once over its contiguous rows, so the NGEMM kernels see one GEMM per
expert and projection (M = that expert's tokens) instead of one per token.
"""

from __future__ import annotations

import torch
from torch import nn

from tessera.layers import experts as X
from tessera.layers.moe import Experts


class LinearExperts(nn.Module):
    def __init__(self, num_experts: int, hidden: int, ffn: int):
        super().__init__()
        self.gate_up = nn.ModuleList(nn.Linear(hidden, 2 * ffn, bias=False) for _ in range(num_experts))
        self.down = nn.ModuleList(nn.Linear(ffn, hidden, bias=False) for _ in range(num_experts))

    @classmethod
    def from_experts(cls, experts: Experts) -> LinearExperts:
        E, two_ffn, H = experts.gate_up_proj.shape
        w = experts.gate_up_proj
        new = cls(E, H, two_ffn // 2).to(device=w.device, dtype=w.dtype)
        with torch.no_grad():
            for e in range(E):
                new.gate_up[e].weight.copy_(experts.gate_up_proj[e])
                new.down[e].weight.copy_(experts.down_proj[e])
        return new

    def forward(self, x, ids, weights):  # x [T, H], ids / weights [T, k] -> [T, H]
        p = X.permute(ids, weights, len(self.gate_up))
        y = X.per_expert(x[p.token], p.offsets, lambda e, r: self.down[e](X.swiglu_rows(self.gate_up[e](r))))
        return X.combine(x, p, y)


def split_experts(model: nn.Module) -> int:
    """In place: every `Experts` module becomes `LinearExperts`; returns how many were replaced."""
    n = 0
    for module in list(model.modules()):
        if isinstance(getattr(module, "experts", None), Experts):
            module.experts = LinearExperts.from_experts(module.experts)
            n += 1
    return n
