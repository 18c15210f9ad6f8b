"""Drop-in quantized replacements for nn.Linear (gpt-fast `quantize.py` style).

The buffers *are* the packed layout of `tessera.kernels.ngemm.gemm` (the same on every ISA), so a
quantized state dict is packed once and loads anywhere; only the small derived `colsum` is rebuilt
at load. On CUDA, Int8Linear runs the Triton W8A8 kernel on the unpacked [N, K] view.
"""

from __future__ import annotations

import torch
from torch import nn

from tessera.kernels.ngemm import gemm as G
from tessera.kernels.ngemm.layout import PANEL
from tessera.quant.weights import quantize_weight_int4, quantize_weight_int8


def _ceil(a: int, b: int) -> int:
    return -(-a // b) * b


def _on_cpu(linear: nn.Linear) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(weight, bias) on the CPU: packing runs there; loading the packed state dict moves it back."""
    return linear.weight.detach().cpu(), None if linear.bias is None else linear.bias.detach().cpu()


class _QuantLinear(nn.Module):
    def __init__(self, in_features: int, out_features: int, bias: bool):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("bias", torch.zeros(_ceil(out_features, PANEL)) if bias else None)  # [Np]
        self._pw = None  # packed-weight view of the buffers, rebuilt when they change

    def _load_from_state_dict(self, *args, **kwargs):
        self._pw = None  # loading copies into the buffers in place: derived data is stale
        return super()._load_from_state_dict(*args, **kwargs)

    #: buffers the kernels read as fp32 whatever the model's dtype: a cast of the model (`.to(bfloat16)`,
    #: `.half()`) would hand them 16-bit data through a float* (garbage, and reads past the end)
    FP32_BUFFERS = ("weight_scale", "scales", "bias")

    def _apply(self, fn, *args, **kwargs):
        self._pw = None
        fp32 = {n: t for n in self.FP32_BUFFERS if (t := self._buffers.get(n)) is not None}
        super()._apply(fn, *args, **kwargs)
        for n, t in fp32.items():  # keep the exact fp32 values, follow a device move
            if self._buffers[n].dtype != torch.float32:
                self._buffers[n] = t.to(self._buffers[n].device)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [..., in] -> [..., out]
        if self._pw is None:
            self._pw = self._packed()
        if x.dtype in (torch.float32, torch.bfloat16):  # the kernels write x's dtype: no cast (~3 us a call)
            return self._run(x if x.is_contiguous() else x.contiguous(), self._pw)
        return self._run(x.float().contiguous(), self._pw).to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class Int8Linear(_QuantLinear):
    """W8A8: int8 per-channel weights, int8 per-token dynamic activations."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__(in_features, out_features, bias)
        Np, Kp = _ceil(out_features, PANEL), _ceil(in_features, 4)
        self.register_buffer("qweight", torch.zeros(Np // PANEL, Kp // 4, PANEL, 4, dtype=torch.int8))
        self.register_buffer("weight_scale", torch.zeros(Np))  # [Np]

    @staticmethod
    def pack(linear: nn.Linear) -> G.PackedInt8Weight:
        w, bias = _on_cpu(linear)
        return G.pack_int8(*quantize_weight_int8(w), bias)

    def _packed(self) -> G.PackedInt8Weight:
        colsum = self.qweight.sum(dim=(1, 3), dtype=torch.int32).flatten()  # [Np]
        return G.PackedInt8Weight(self.qweight, self.weight_scale, colsum, self.bias, self.out_features,
                                  self.in_features)

    def _run(self, x, pw):
        if x.is_cuda:
            from tessera.kernels.ngemm.gemm_triton import w8a8_linear

            n = self.out_features
            bias = None if self.bias is None else self.bias[:n]
            return w8a8_linear(x, G.unpack_int8(pw), pw.scale[:n].contiguous(), bias)
        return G.int8_linear(x, pw)


class Int4Linear(_QuantLinear):
    """W4A8: int4 weights with per-group scales, int8 per-token dynamic activations (CPU only)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, group: int = 128):
        super().__init__(in_features, out_features, bias)
        if group not in G.SUPPORTED_GROUP_SIZES or in_features % group:
            raise ValueError(f"group {group} must be one of {G.SUPPORTED_GROUP_SIZES} and divide {in_features}")
        self.group = group
        Np = _ceil(out_features, PANEL)
        self.register_buffer("qweight", torch.zeros(Np // PANEL, in_features // 8, PANEL, 4, dtype=torch.uint8))
        self.register_buffer("scales", torch.zeros(Np // PANEL, in_features // group, PANEL))

    @staticmethod
    def pack(linear: nn.Linear, group: int) -> G.PackedInt4Weight:
        w, bias = _on_cpu(linear)
        return G.pack_int4(*quantize_weight_int4(w, group), group, bias)

    def _packed(self) -> G.PackedInt4Weight:
        return G.PackedInt4Weight(self.qweight, self.scales, self.bias, self.out_features, self.in_features,
                                  self.group)

    def _run(self, x, pw):
        if x.is_cuda:
            raise NotImplementedError("W4A8 has no GPU kernel yet; use w8a8 on CUDA")
        return G.int4_linear(x, pw)
