"""SwiGLU feed-forward block (Shazeer, 2020), as in Llama and Qwen2."""

import torch
import torch.nn.functional as F
from torch import nn


class SwiGLU(nn.Module):
    def __init__(self, hidden: int, intermediate: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden, intermediate, bias=False)
        self.up_proj = nn.Linear(hidden, intermediate, bias=False)
        self.down_proj = nn.Linear(intermediate, hidden, bias=False)
        self.gate_up_proj, self.gate_up_sizes = None, None  # fused when set (`tessera.quant.fuse_projections`)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, S, hidden]
        if self.gate_up_proj is not None:
            gate, up = self.gate_up_proj(x).split(self.gate_up_sizes, dim=-1)  # [B, S, inter] each
        else:
            gate, up = self.gate_proj(x), self.up_proj(x)
        return self.down_proj(F.silu(gate) * up)
