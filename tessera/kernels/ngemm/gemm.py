"""W8A8 and W4A8 linear on the CPU: VNNI-layout weights packed once, generated C kernels, torch fallback.

    y[m, n] = s_a[m] * s_w[n] * sum_k a_q[m, k] * w_q[n, k] + bias[n]              (W8A8)
    y[m, n] = s_a[m] * sum_g s_w[n, g] * sum_{k in g} a_q[m, k] * w_q[n, k] + bias[n]  (W4A8)

Activations are quantized per token (dynamic, symmetric, int8 in [-127, 127]) inside the call.
Kernels: `codegen.py` (what is generated and why), compiled by `ccache.py`, loaded and chosen by
`library.py` on the best ISA of `cpu_isa.py`. The `torch` backend performs the same integer and fp32
operations in the same order, so every backend returns bit-identical outputs (tests check this).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from tessera.kernels.ngemm.layout import PANEL
from tessera.kernels.ngemm.library import resolve_backend
from tessera.kernels.ngemm.reference import quantize_per_token

SUPPORTED_GROUP_SIZES = (32, 64, 128, 256)


def _ceil(a: int, b: int) -> int:
    return -(-a // b) * b


@dataclass
class PackedInt8Weight:
    data: torch.Tensor  # [Np/64, Kp/4, 64, 4] int8, the VNNI layout
    scale: torch.Tensor  # [Np] fp32 per output channel
    colsum: torch.Tensor  # [Np] int32, sum_k w_q[n, k], for the +128 activation shift
    bias: torch.Tensor | None  # [Np] fp32
    n: int
    k: int
    _plain: torch.Tensor | None = field(default=None, repr=False)  # [N, K] for the torch backend
    sign_ok: bool = field(init=False, repr=False)  # no -128 in the weights: AVX2 may use its sign-trick kernels

    def __post_init__(self):
        _check_packed(self, torch.int8, colsum=self.colsum)
        self.sign_ok = not bool((self.data == -128).any())


@dataclass
class PackedInt4Weight:
    data: torch.Tensor  # [Np/64, K/8, 64, 4] uint8, two u4 = q + 8 per byte
    scale: torch.Tensor  # [Np/64, K/group, 64] fp32 group scales
    bias: torch.Tensor | None  # [Np] fp32
    n: int
    k: int
    group: int
    _plain: tuple | None = field(default=None, repr=False)

    def __post_init__(self):
        _check_packed(self, torch.uint8)


def _check_packed(pw, data_dtype, colsum=None):
    """The kernels take raw pointers: wrong dtypes would be read as the expected ones, past the end."""
    for name, t, dtype in (("data", pw.data, data_dtype), ("scale", pw.scale, torch.float32),
                           ("bias", pw.bias, torch.float32), ("colsum", colsum, torch.int32)):
        if t is not None and (t.dtype != dtype or not t.is_contiguous()):
            raise ValueError(f"packed weight: {name} must be a contiguous {dtype} tensor, got {t.dtype}"
                             f"{'' if t.is_contiguous() else ' (not contiguous)'}")


def _check(t: torch.Tensor, name: str, dtypes: tuple, ndim: int):
    if not isinstance(t, torch.Tensor) or t.dtype not in dtypes:
        raise ValueError(f"{name} must be a tensor of dtype {dtypes}, got {getattr(t, 'dtype', type(t))}")
    if t.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dims, got shape {tuple(t.shape)}")
    if t.device.type != "cpu":
        raise ValueError(f"{name} must be on the CPU (use the Triton kernel on GPU), got {t.device}")
    if not t.is_contiguous():
        raise ValueError(f"{name} must be contiguous")


def _pad_vec(v: torch.Tensor | None, n: int, np_: int, name: str) -> torch.Tensor | None:
    if v is None:
        return None
    if v.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), got {tuple(v.shape)}")
    return torch.nn.functional.pad(v.detach().float(), (0, np_ - n)).contiguous()


def pack_int8(w_q: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None = None) -> PackedInt8Weight:
    """w_q [N, K] int8, scale [N] -> VNNI panels. Zero padding to N%64, K%4 adds nothing to any sum."""
    _check(w_q, "w_q", (torch.int8,), 2)
    N, K = w_q.shape
    Np, Kp = _ceil(N, PANEL), _ceil(K, 4)
    w = torch.nn.functional.pad(w_q, (0, Kp - K, 0, Np - N))  # [Np, Kp]
    data = w.view(Np // PANEL, PANEL, Kp // 4, 4).permute(0, 2, 1, 3).contiguous()
    colsum = w.sum(1, dtype=torch.int32)  # [Np]
    return PackedInt8Weight(data, _pad_vec(scale, N, Np, "scale"), colsum, _pad_vec(bias, N, Np, "bias"), N, K)


def unpack_int8(pw: PackedInt8Weight) -> torch.Tensor:
    """Inverse of `pack_int8`: [N, K] int8 (cached: the torch backend reads it every call)."""
    if pw._plain is None:
        P, Kq = pw.data.shape[:2]
        pw._plain = pw.data.permute(0, 2, 1, 3).reshape(P * PANEL, Kq * 4)[: pw.n, : pw.k].contiguous()
    return pw._plain


def pack_int4(w_q: torch.Tensor, scale: torch.Tensor, group: int, bias=None) -> PackedInt4Weight:
    """w_q [N, K] int8 holding int4 values in [-8, 7], scale [N, K/group] -> nibble VNNI panels."""
    _check(w_q, "w_q", (torch.int8,), 2)
    N, K = w_q.shape
    if group not in SUPPORTED_GROUP_SIZES:
        raise ValueError(f"unsupported group size {group}; supported: {SUPPORTED_GROUP_SIZES}")
    if K % group:
        raise ValueError(f"K={K} must be a multiple of the group size {group}")
    if w_q.min() < -8 or w_q.max() > 7:
        raise ValueError("int4 weights must lie in [-8, 7]")
    if scale.shape != (N, K // group):
        raise ValueError(f"scale must have shape ({N}, {K // group}), got {tuple(scale.shape)}")
    Np = _ceil(N, PANEL)
    u = torch.nn.functional.pad(w_q, (0, 0, 0, Np - N)).to(torch.int16) + 8  # [Np, K] in [0, 15]
    u = u.view(Np // PANEL, PANEL, K // 8, 2, 4)  # k = 8 s + 4 h + j
    byte = (u[:, :, :, 0] | (u[:, :, :, 1] << 4)).to(torch.uint8)  # [Np/64, 64, K/8, 4]
    data = byte.permute(0, 2, 1, 3).contiguous()
    sc = torch.nn.functional.pad(scale.detach().float(), (0, 0, 0, Np - N))  # [Np, K/group]
    sc = sc.view(Np // PANEL, PANEL, K // group).permute(0, 2, 1).contiguous()
    return PackedInt4Weight(data, sc, _pad_vec(bias, N, Np, "bias"), N, K, group)


def unpack_int4(pw: PackedInt4Weight) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of `pack_int4`: (w_q [N, K] int8, scale [N, K/group] fp32)."""
    if pw._plain is None:
        P, S = pw.data.shape[:2]
        b = pw.data.permute(0, 2, 1, 3).to(torch.int16)  # [P, 64, K/8, 4]
        u = torch.stack((b & 15, b >> 4), dim=3).reshape(P * PANEL, S * 8)  # [Np, K]
        q = (u - 8).to(torch.int8)[: pw.n].contiguous()
        sc = pw.scale.permute(0, 2, 1).reshape(P * PANEL, -1)[: pw.n].contiguous()
        pw._plain = (q, sc)
    return pw._plain


_FLOATS = (torch.float32, torch.bfloat16)


def _prepare_x(x: torch.Tensor, k: int, out_dtype):
    """-> (x as [M, K], out dtype). Cheap on the good path: at the embedded model's 256x256 and M = 1 the
    kernel takes ~2 us, so every check here is on the per-call overhead that decides the speed."""
    if not isinstance(x, torch.Tensor) or x.dtype not in _FLOATS:
        raise ValueError(f"x must be float32 or bfloat16, got {getattr(x, 'dtype', type(x))}")
    if x.dim() < 1 or x.shape[-1] != k:
        raise ValueError(f"x has K={x.shape[-1] if x.dim() else None}, the weight expects K={k}")
    if not x.is_contiguous():
        raise ValueError("x must be contiguous")
    if not x.is_cpu:
        raise ValueError(f"x must be on the CPU, got {x.device}")
    out_dtype = out_dtype or x.dtype
    if out_dtype not in _FLOATS:
        raise ValueError(f"out_dtype must be float32 or bfloat16, got {out_dtype}")
    return (x if x.dim() == 2 else x.reshape(-1, k)), out_dtype  # [M, K]


def _as_input_shape(out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """[M, N] -> [..., N] with x's leading dims (a `view` costs ~2 us per call, so only when needed)."""
    return out if x.dim() == 2 else out.view(*x.shape[:-1], out.shape[-1])


def _ptr(t: torch.Tensor | None):
    return None if t is None else t.data_ptr()


def _epilogue(acc: torch.Tensor, scale: torch.Tensor, bias, n: int, out_dtype):
    """fp32 epilogue of the torch backend, in the C kernel's operation order (mul, then add)."""
    y = acc * scale
    return (y if bias is None else y + bias[:n]).to(out_dtype)


def int8_linear(x: torch.Tensor, pw: PackedInt8Weight, out_dtype=None, backend=None):
    """W8A8: x [..., K] fp32/bf16 -> [..., N] in out_dtype (default x.dtype)."""
    x2, out_dtype = _prepare_x(x, pw.k, out_dtype)
    M = x2.shape[0]
    name, lib = resolve_backend(backend)
    if name == "torch":
        a_q, sa = quantize_per_token(x2)
        acc = torch._int_mm(a_q, unpack_int8(pw).T).float()  # [M, N] exact int32 -> fp32
        y = _epilogue(acc, sa[:, None] * pw.scale[None, : pw.n], pw.bias, pw.n, out_dtype)
        return y.view(*x.shape[:-1], pw.n)
    Kp = pw.data.shape[1] * 4
    kernel = lib.w8_kernel(M, Kp, pw.sign_ok)
    out = torch.empty(M, pw.n, dtype=out_dtype)
    lib.handle.tq_w8a8_x(x2.data_ptr(), int(x2.dtype == torch.bfloat16), M, pw.k, pw.data.data_ptr(),
                         pw.colsum.data_ptr(), pw.scale.data_ptr(), _ptr(pw.bias), out.data_ptr(),
                         int(out_dtype == torch.bfloat16), pw.n, Kp, kernel.a_rows(M), kernel,
                         torch.get_num_threads())
    return _as_input_shape(out, x)


def int4_linear(x: torch.Tensor, pw: PackedInt4Weight, out_dtype=None, backend=None):
    """W4A8: x [..., K] fp32/bf16 -> [..., N]; group-wise int4 weights, per-token int8 activations."""
    x2, out_dtype = _prepare_x(x, pw.k, out_dtype)
    M, G = x2.shape[0], pw.group
    name, lib = resolve_backend(backend)
    if name == "torch":
        a_q, sa = quantize_per_token(x2)
        w_q, sc = unpack_int4(pw)  # [N, K], [N, K/G]
        acc = torch.zeros(M, pw.n)
        for g in range(pw.k // G):  # sequential over groups: the C kernel's summation order
            part = torch._int_mm(a_q[:, g * G:(g + 1) * G].contiguous(), w_q[:, g * G:(g + 1) * G].T)
            acc = acc + part.float() * sc[:, g]
        return _epilogue(acc, sa[:, None], pw.bias, pw.n, out_dtype).view(*x.shape[:-1], pw.n)
    out = torch.empty(M, pw.n, dtype=out_dtype)
    lib.handle.tq_w4a8_x(x2.data_ptr(), int(x2.dtype == torch.bfloat16), M, pw.k, pw.data.data_ptr(),
                         pw.scale.data_ptr(), _ptr(pw.bias), out.data_ptr(), int(out_dtype == torch.bfloat16),
                         pw.n, G, torch.get_num_threads())
    return _as_input_shape(out, x)
