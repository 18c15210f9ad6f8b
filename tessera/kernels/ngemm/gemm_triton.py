"""W8A8 GEMM in Triton for the GPU: `tl.dot` int8 x int8 -> int32 with the CPU kernels' fused epilogue.

    y[m, n] = float(sum_k a_q[m, k] * w_q[n, k]) * (s_a[m] * s_w[n]) + bias[n]

Same quantization contract as `gemm.py` (per-token symmetric activations, per-channel
weights, mul-then-add epilogue), so it is tested under TRITON_INTERPRET=1 against the same
references. Weights stay in nn.Linear's [N, K] orientation: the tile load transposes for free.
Activations are quantized by `_quantize_kernel`, one program per token, bit-identical to the torch
reference quantizer (which launches ~10 kernels, longer than the GEMM itself at decode; docs/ngemm.md).
On H100/H200 int8 `tl.dot` maps to IMMA tensor cores.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _quantize_kernel(x_ptr, q_ptr, s_ptr, K, stride_x, BLOCK: tl.constexpr):
    """Row `program_id(0)` of x [M, K] -> q [M, K] int8 = round_half_even(x * (127 / amax)) clamped to
    +-127, s [M] = amax / 127: `reference.quantize_per_token` op for op (IEEE divisions, no fused
    multiply-add: the launch passes enable_fp_fusion=False)."""
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)  # [BLOCK]
    amax = tl.zeros((BLOCK,), dtype=tl.float32)
    for k0 in range(0, K, BLOCK):
        x = tl.load(x_ptr + row * stride_x + k0 + cols, mask=k0 + cols < K, other=0.0).to(tl.float32)
        amax = tl.maximum(amax, tl.abs(x))
    amax_row = tl.max(amax, axis=0)
    inv = tl.where(amax_row > 0, tl.div_rn(127.0, tl.where(amax_row > 0, amax_row, 1.0)), 0.0)  # no 1/0
    for k0 in range(0, K, BLOCK):
        x = tl.load(x_ptr + row * stride_x + k0 + cols, mask=k0 + cols < K, other=0.0).to(tl.float32)
        y = x * inv  # [BLOCK], |y| <= 127: y + 0.5 is exact
        r = tl.floor(y + 0.5)
        r = tl.where((r - y == 0.5) & (r - 2.0 * tl.floor(r * 0.5) == 1.0), r - 1.0, r)  # ties to even
        q = tl.minimum(tl.maximum(r, -127.0), 127.0).to(tl.int8)
        tl.store(q_ptr + row * K + k0 + cols, q, mask=k0 + cols < K)
    tl.store(s_ptr + row, tl.div_rn(amax_row, 127.0))


def quantize_per_token(x: torch.Tensor, block: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """x [M, K] fp32/bf16/fp16 (rows contiguous) -> (q [M, K] int8, scale [M] fp32), one kernel."""
    if x.dim() != 2 or x.stride(1) != 1:
        raise ValueError(f"x must be 2-D with contiguous rows, got shape {tuple(x.shape)} strides {x.stride()}")
    M, K = x.shape
    q = torch.empty(M, K, dtype=torch.int8, device=x.device)
    s = torch.empty(M, dtype=torch.float32, device=x.device)
    if M == 0:
        return q, s
    _quantize_kernel[(M,)](x, q, s, K, x.stride(0), BLOCK=min(block, triton.next_power_of_2(K)),
                           num_warps=4, enable_fp_fusion=False)
    return q, s


@triton.jit
def _w8a8_kernel(a_ptr, sa_ptr, w_ptr, sw_ptr, bias_ptr, out_ptr, M, N, K,
                 stride_am, stride_wn, stride_om,
                 HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid_m, pid_n = tl.program_id(0), tl.program_id(1)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # [BM]
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # [BN]
    rk = tl.arange(0, BLOCK_K)  # [BK]
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    for k0 in range(0, K, BLOCK_K):
        kk = k0 + rk
        a = tl.load(a_ptr + rm[:, None] * stride_am + kk[None, :],
                    mask=(rm[:, None] < M) & (kk[None, :] < K), other=0)  # [BM, BK] int8
        w = tl.load(w_ptr + rn[None, :] * stride_wn + kk[:, None],
                    mask=(rn[None, :] < N) & (kk[:, None] < K), other=0)  # [BK, BN] int8
        acc = tl.dot(a, w, acc, out_dtype=tl.int32)
    sa = tl.load(sa_ptr + rm, mask=rm < M, other=0.0)  # [BM]
    sw = tl.load(sw_ptr + rn, mask=rn < N, other=0.0)  # [BN]
    y = acc.to(tl.float32) * (sa[:, None] * sw[None, :])
    if HAS_BIAS:
        y = y + tl.load(bias_ptr + rn, mask=rn < N, other=0.0)[None, :]
    tl.store(out_ptr + rm[:, None] * stride_om + rn[None, :], y.to(out_ptr.dtype.element_ty),
             mask=(rm[:, None] < M) & (rn[None, :] < N))


def _check(t, name, dtype, shape):
    if not isinstance(t, torch.Tensor) or t.dtype != dtype:
        raise ValueError(f"{name} must be a {dtype} tensor, got {getattr(t, 'dtype', type(t))}")
    if tuple(t.shape) != shape:
        raise ValueError(f"{name} must have shape {shape}, got {tuple(t.shape)}")
    if not t.is_contiguous():
        raise ValueError(f"{name} must be contiguous")


def default_config(M: int, N: int) -> tuple[tuple[int, int, int], int, int]:
    """((BLOCK_M, BLOCK_N, BLOCK_K), num_warps, num_stages), from sweeps on an H200 over the Llama-8B
    projection shapes (figures in docs/ngemm.md, section "GPU"). Decode (M <= 16) streams the weights:
    wide K tiles, BLOCK_N by N, 2 warps for narrow tiles; split-K lost everywhere. Prefill: 128x128
    tiles, or 64x64 when 128x128 would leave SMs idle (M = 256, N = 4096: 64 tiles on 132 SMs)."""
    if M <= 16:
        bn = 16 if N <= 1024 else 32 if N < 8192 else 64
        return (16, bn, 256 if bn == 64 else 512), 2 if bn <= 32 else 4, 4
    if M <= 64:
        return (64, 128, 128), 4, 4
    if triton.cdiv(M, 128) * triton.cdiv(N, 128) < 128:
        return (64, 64, 128), 4, 4
    return (128, 128, 128), 8, 3


def w8a8_matmul(a_q, a_scale, w_q, w_scale, bias=None, out_dtype=torch.float32, block=None, warps=None, stages=None):
    """a_q [M, K] int8, a_scale [M] fp32, w_q [N, K] int8, w_scale [N] fp32, bias [N] -> [M, N].

    block: (BLOCK_M, BLOCK_N, BLOCK_K), each a power of two >= 16; None (and warps, stages None) take
    `default_config(M, N)`."""
    if a_q.dim() != 2 or w_q.dim() != 2:
        raise ValueError(f"a_q and w_q must be 2-D, got {tuple(a_q.shape)} and {tuple(w_q.shape)}")
    (M, K), N = a_q.shape, w_q.shape[0]
    if w_q.shape[1] != K:
        raise ValueError(f"K mismatch: a_q has K={K}, w_q has K={w_q.shape[1]}")
    _check(a_q, "a_q", torch.int8, (M, K))
    _check(w_q, "w_q", torch.int8, (N, K))
    _check(a_scale, "a_scale", torch.float32, (M,))
    _check(w_scale, "w_scale", torch.float32, (N,))
    if bias is not None:
        _check(bias, "bias", torch.float32, (N,))
    if out_dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"unsupported out_dtype {out_dtype}")
    if len({t.device for t in (a_q, w_q, a_scale, w_scale)}) != 1:
        raise ValueError("all tensors must be on the same device")
    cfg_block, cfg_warps, cfg_stages = default_config(M, N)
    bm, bn, bk = block or cfg_block
    out = torch.empty(M, N, dtype=out_dtype, device=a_q.device)
    grid = (triton.cdiv(M, bm), triton.cdiv(N, bn))
    _w8a8_kernel[grid](a_q, a_scale, w_q, w_scale, bias if bias is not None else w_scale, out, M, N, K,
                       a_q.stride(0), w_q.stride(0), out.stride(0),
                       HAS_BIAS=bias is not None, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk,
                       num_warps=warps or cfg_warps, num_stages=stages or cfg_stages)
    return out


def w8a8_linear(x, w_q, w_scale, bias=None, out_dtype=None, block=None):
    """x [..., K] float -> [..., N]: per-token int8 quantization, then `w8a8_matmul`."""
    if not x.is_floating_point():
        raise ValueError(f"x must be floating point, got {x.dtype}")
    x2 = x.reshape(-1, x.shape[-1])  # [M, K]
    a_q, a_s = quantize_per_token(x2)
    y = w8a8_matmul(a_q, a_s, w_q, w_scale, bias, out_dtype or x.dtype, block)
    return y.view(*x.shape[:-1], w_q.shape[0])
