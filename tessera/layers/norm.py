"""RMSNorm (Zhang & Sennrich, 2019), computed in fp32 like the HF Llama reference."""

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [..., dim]
        dtype = x.dtype
        if dtype == torch.float32 and self.weight.dtype == torch.float32:
            # torch's op computes the same fp32 expression as below, bitwise (tests/test_rmsnorm.py), with one
            # call from Python instead of seven (on CPU it is a C++ composite of the same ops): a decode step
            # of a small model pays a Python dispatch per op
            return F.rms_norm(x, self.weight.shape, self.weight, self.eps)
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(dtype)
