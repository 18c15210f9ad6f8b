"""Plain-PyTorch references for the int8 / int4 GEMM kernels: every kernel is tested against these.

Integer results are computed in int64, so they are exact for any K; dequantised results in float64.
`quantize_per_token` is bit-for-bit the quantizer the C kernels run: both compute
`inv = 127 / amax` and `round_half_even(x * inv)` in fp32.
"""

from __future__ import annotations

import torch


def quantize_per_token(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [M, K] fp32/bf16 -> (q [M, K] int8 in [-127, 127], scale [M] fp32), x ~= q * scale[:, None]."""
    x = x.float()
    amax = x.abs().amax(dim=-1)  # [M]
    # Tensor / tensor is IEEE division; `127.0 / amax` would be reciprocal-then-multiply in torch
    # (off by an ulp), and the C quantizer divides.
    inv = torch.where(amax > 0, torch.full_like(amax, 127.0) / amax, torch.zeros_like(amax))  # [M]
    q = torch.round(x * inv[:, None]).clamp(-127, 127).to(torch.int8)  # [M, K]
    return q, amax / 127.0


def int_gemm(a: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """a [M, K] int8, w [N, K] int8 -> a @ w.T [M, N] int64 (exact)."""
    return a.long() @ w.long().T


def w8a8(x: torch.Tensor, w_q: torch.Tensor, w_scale: torch.Tensor, bias: torch.Tensor | None = None):
    """Dequantised W8A8 linear in float64: x [M, K], w_q [N, K] int8, w_scale [N] -> [M, N]."""
    a_q, a_s = quantize_per_token(x)
    y = int_gemm(a_q, w_q).double() * (a_s.double()[:, None] * w_scale.double()[None, :])
    return y if bias is None else y + bias.double()


def w4a8(x: torch.Tensor, w_q: torch.Tensor, w_scale: torch.Tensor, group: int, bias: torch.Tensor | None = None):
    """Dequantised W4A8 linear in float64: w_q [N, K] int4 values in int8, w_scale [N, K/group]."""
    a_q, a_s = quantize_per_token(x)
    M, K = a_q.shape
    N = w_q.shape[0]
    part = torch.einsum("mgk,ngk->mng", a_q.double().view(M, K // group, group),
                        w_q.double().view(N, K // group, group))  # [M, N, G] exact integer partials
    y = (part * w_scale.double()[None]).sum(-1) * a_s.double()[:, None]
    return y if bias is None else y + bias.double()
