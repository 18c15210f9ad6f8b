"""Fuse sibling projections that read the same input into one linear: q/k/v and gate/up.

One GEMM of N = Nq + Nk + Nv instead of three, as vLLM's `QKVParallelLinear` and
`MergedColumnParallelLinear` do at load time. For the quantized linears this is exact: weight scales
are per output row (int4 groups too), so quantizing the concatenated matrix gives the same integers and
scales row for row, and the activations are quantized once per token either way; the fused layer's
outputs equal the separate layers' bit for bit. What it saves is per-call overhead, which decides the
speed of small models at decode (16 instead of 28 linear calls per token for the embedded model).
"""

from __future__ import annotations

import torch
from torch import nn

#: (names of the siblings, name of the fused linear, name of the split-sizes attribute)
GROUPS = ((("q_proj", "k_proj", "v_proj"), "qkv_proj", "qkv_sizes"),
          (("gate_proj", "up_proj"), "gate_up_proj", "gate_up_sizes"))


def _concat(linears: list[nn.Linear]) -> nn.Linear:
    w = linears[0].weight
    biases = [lin.bias for lin in linears]
    fused = nn.Linear(w.shape[1], sum(lin.out_features for lin in linears), bias=biases[0] is not None,
                      device=w.device, dtype=w.dtype)
    with torch.no_grad():
        fused.weight.copy_(torch.cat([lin.weight for lin in linears]))  # [sum N, K]
        if fused.bias is not None:
            fused.bias.copy_(torch.cat(biases))
    return fused


def _fusable(linears) -> bool:
    if not all(type(lin) is nn.Linear for lin in linears):  # already quantized or tensor-parallel: leave
        return False
    first = linears[0]
    return all(lin.in_features == first.in_features and (lin.bias is None) == (first.bias is None)
               and lin.weight.dtype == first.weight.dtype and lin.weight.device == first.weight.device
               for lin in linears)


def fuse_projections(model: nn.Module) -> int:
    """In place: every module holding all the siblings of a group as plain nn.Linear gets the fused linear
    (`qkv_proj` + `qkv_sizes`, `gate_up_proj` + `gate_up_sizes`) and its siblings set to None; the layers'
    forward uses the fused one when present. Returns how many groups were fused."""
    fused = 0
    for module in list(model.modules()):
        for names, fused_name, sizes_name in GROUPS:
            linears = [getattr(module, n, None) for n in names]
            if not hasattr(module, fused_name) or not _fusable(linears):
                continue
            setattr(module, fused_name, _concat(linears))
            setattr(module, sizes_name, tuple(lin.out_features for lin in linears))
            for n in names:
                setattr(module, n, None)
            fused += 1
    return fused
