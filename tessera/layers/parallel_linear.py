"""Tensor-parallel linears (Megatron-LM, Shoeybi et al. 2019; nano-vllm `layers/linear.py`).

Each layer owns its sharding and its one collective (as nano-vllm `layers/linear.py` does):
- `ColumnParallelLinear`: weight rows (output features) split across ranks. Input replicated
  -> local output slice, no communication. With `comm.sequence_parallel` inputs (tokens split
  across ranks) it runs the fused AllGather-GEMM instead, gathering tokens while multiplying.
- `RowParallelLinear`: weight columns (input features) split. Partial sums are combined by an
  AllReduce (fused Triton kernel or torch, `TPComm.mode`); with token-split outputs it runs the
  fused GEMM-ReduceScatter. The bias is added once, after the reduction.

`comm` is a `tessera.parallel.tp.TPComm`: the group, the symmetric heap and the op contexts.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ColumnParallelLinear(nn.Module):
    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, comm, gather_tokens: bool = False):
        super().__init__()
        self.weight = nn.Parameter(weight, requires_grad=False)  # [out/W, in]
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)  # [out/W]
        self.comm, self.gather_tokens = comm, gather_tokens

    @classmethod
    def from_linear(cls, lin: nn.Linear, comm, gather_tokens: bool = False) -> ColumnParallelLinear:
        W, r = comm.world, comm.rank
        out = lin.out_features
        comm.require(out % W == 0, f"ColumnParallelLinear: world size {W} does not divide out_features={out}")
        rows = slice(r * out // W, (r + 1) * out // W)
        bias = None if lin.bias is None else lin.bias.detach()[rows].clone()
        return cls(lin.weight.detach()[rows].clone(), bias, comm, gather_tokens)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.gather_tokens:
            return F.linear(x, self.weight, self.bias)  # [..., in] -> [..., out/W]
        y = self.comm.ag_gemm(x, self.weight.t())  # [T_loc, in] -> [W*T_loc, out/W]
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        return f"out/W={self.weight.shape[0]}, in={self.weight.shape[1]}, gather_tokens={self.gather_tokens}"


class RowParallelLinear(nn.Module):
    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, comm, scatter_tokens: bool = False):
        super().__init__()
        self.weight = nn.Parameter(weight, requires_grad=False)  # [out, in/W]
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)  # [out], added once
        self.comm, self.scatter_tokens = comm, scatter_tokens

    @classmethod
    def from_linear(cls, lin: nn.Linear, comm, scatter_tokens: bool = False) -> RowParallelLinear:
        W, r = comm.world, comm.rank
        k = lin.in_features
        comm.require(k % W == 0, f"RowParallelLinear: world size {W} does not divide in_features={k}")
        cols = slice(r * k // W, (r + 1) * k // W)
        bias = None if lin.bias is None else lin.bias.detach().clone()
        return cls(lin.weight.detach()[:, cols].clone(), bias, comm, scatter_tokens)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [..., in/W] -> [..., out] (or token-split)
        if self.scatter_tokens:
            y = self.comm.gemm_rs(x, self.weight.t())  # [T, in/W] -> [T/W, out]
        else:
            y = self.comm.allreduce(F.linear(x, self.weight))  # [..., out]
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        return f"out={self.weight.shape[0]}, in/W={self.weight.shape[1]}, scatter_tokens={self.scatter_tokens}"
