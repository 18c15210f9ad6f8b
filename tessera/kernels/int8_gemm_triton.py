"""W8A8 GEMM in Triton for the GPU: `tl.dot` int8 x int8 -> int32 with the CPU kernels' fused epilogue.

    y[m, n] = float(sum_k a_q[m, k] * w_q[n, k]) * (s_a[m] * s_w[n]) + bias[n]

Same quantization contract as `int8_gemm.py` (per-token symmetric activations, per-channel
weights, mul-then-add epilogue), so it is tested under TRITON_INTERPRET=1 against the same
references. Weights stay in nn.Linear's [N, K] orientation: the tile load transposes for free.
Activations are quantized with the torch reference quantizer (a few small kernels; fusing it into
a Triton prologue is future work). On H100 int8 `tl.dot` maps to IMMA tensor cores.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from tessera.kernels.int8_reference import quantize_per_token


@triton.jit
def _epilogue(acc, rm, rn, sa_ptr, sw_ptr, bias_ptr, out_ptr, M, N, stride_om, HAS_BIAS: tl.constexpr):
    """acc [BM, BN] int32 -> out[rm, rn] = float(acc) * (s_a * s_w) + bias, in out's dtype."""
    sa = tl.load(sa_ptr + rm, mask=rm < M, other=0.0)  # [BM]
    sw = tl.load(sw_ptr + rn, mask=rn < N, other=0.0)  # [BN]
    y = acc.to(tl.float32) * (sa[:, None] * sw[None, :])
    if HAS_BIAS:
        y = y + tl.load(bias_ptr + rn, mask=rn < N, other=0.0)[None, :]
    tl.store(out_ptr + rm[:, None] * stride_om + rn[None, :], y.to(out_ptr.dtype.element_ty),
             mask=(rm[:, None] < M) & (rn[None, :] < N))


@triton.jit
def _w8a8_kernel(a_ptr, sa_ptr, w_ptr, sw_ptr, bias_ptr, out_ptr, part_ptr, M, N, K, k_per_split,
                 stride_am, stride_wn, stride_om,
                 HAS_BIAS: tl.constexpr, SPLIT_K: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """One [BM, BN] tile over K slice `program_id(2)`. SPLIT_K == 1: the fused epilogue. Else the int32
    partial is atomically added into part [M, N] (integer addition: exact and order-free) and
    `_epilogue_kernel` finishes."""
    pid_m, pid_n, pid_k = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # [BM]
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # [BN]
    rk = tl.arange(0, BLOCK_K)  # [BK]
    k_lo = pid_k * k_per_split  # k_per_split: a multiple of BLOCK_K
    k_hi = tl.minimum(K, k_lo + k_per_split)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    for k0 in range(k_lo, k_hi, BLOCK_K):
        kk = k0 + rk
        a = tl.load(a_ptr + rm[:, None] * stride_am + kk[None, :],
                    mask=(rm[:, None] < M) & (kk[None, :] < k_hi), other=0)  # [BM, BK] int8
        w = tl.load(w_ptr + rn[None, :] * stride_wn + kk[:, None],
                    mask=(rn[None, :] < N) & (kk[:, None] < k_hi), other=0)  # [BK, BN] int8
        acc = tl.dot(a, w, acc, out_dtype=tl.int32)
    if SPLIT_K == 1:
        _epilogue(acc, rm, rn, sa_ptr, sw_ptr, bias_ptr, out_ptr, M, N, stride_om, HAS_BIAS)
    else:
        tl.atomic_add(part_ptr + rm[:, None] * N + rn[None, :], acc, mask=(rm[:, None] < M) & (rn[None, :] < N))


@triton.jit
def _epilogue_kernel(part_ptr, sa_ptr, sw_ptr, bias_ptr, out_ptr, M, N, stride_om,
                     HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)  # [BM]
    rn = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)  # [BN]
    acc = tl.load(part_ptr + rm[:, None] * N + rn[None, :], mask=(rm[:, None] < M) & (rn[None, :] < N), other=0)
    _epilogue(acc, rm, rn, sa_ptr, sw_ptr, bias_ptr, out_ptr, M, N, stride_om, HAS_BIAS)


def _check(t, name, dtype, shape):
    if not isinstance(t, torch.Tensor) or t.dtype != dtype:
        raise ValueError(f"{name} must be a {dtype} tensor, got {getattr(t, 'dtype', type(t))}")
    if tuple(t.shape) != shape:
        raise ValueError(f"{name} must have shape {shape}, got {tuple(t.shape)}")
    if not t.is_contiguous():
        raise ValueError(f"{name} must be contiguous")


def default_config(M: int) -> tuple[tuple[int, int, int, int], int, int]:
    """((BLOCK_M, BLOCK_N, BLOCK_K, SPLIT_K), num_warps, num_stages) by M: decode (M <= 16) streams
    weights with wide-K tiles; prefill uses 128x128 tiles. Untuned: a starting point for the GPU check."""
    if M <= 16:
        return (16, 64, 256, 1), 4, 4
    if M <= 64:
        return (64, 128, 128, 1), 4, 4
    return (128, 128, 128, 1), 8, 3


def w8a8_matmul(a_q, a_scale, w_q, w_scale, bias=None, out_dtype=torch.float32, block=None, warps=None, stages=None):
    """a_q [M, K] int8, a_scale [M] fp32, w_q [N, K] int8, w_scale [N] fp32, bias [N] -> [M, N].

    block: (BLOCK_M, BLOCK_N, BLOCK_K[, SPLIT_K]), block sizes powers of two >= 16, SPLIT_K >= 1 slices
    of K (for decode shapes with too few output tiles to fill the GPU); None picks `default_config(M)`."""
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
    cfg_block, cfg_warps, cfg_stages = default_config(M)
    bm, bn, bk, split = (tuple(block) + (1,))[:4] if block is not None else cfg_block
    if split < 1:
        raise ValueError(f"SPLIT_K must be >= 1, got {split}")
    k_per_split = triton.cdiv(triton.cdiv(K, bk), split) * bk  # whole BLOCK_K steps per slice
    split = triton.cdiv(K, k_per_split)  # no empty slices
    out = torch.empty(M, N, dtype=out_dtype, device=a_q.device)
    part = torch.zeros(M, N, dtype=torch.int32, device=a_q.device) if split > 1 else out
    bias_arg = bias if bias is not None else w_scale
    grid = (triton.cdiv(M, bm), triton.cdiv(N, bn), split)
    _w8a8_kernel[grid](a_q, a_scale, w_q, w_scale, bias_arg, out, part, M, N, K, k_per_split,
                       a_q.stride(0), w_q.stride(0), out.stride(0),
                       HAS_BIAS=bias is not None, SPLIT_K=split, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk,
                       num_warps=warps or cfg_warps, num_stages=stages or cfg_stages)
    if split > 1:
        _epilogue_kernel[grid[:2]](part, a_scale, w_scale, bias_arg, out, M, N, out.stride(0),
                                   HAS_BIAS=bias is not None, BLOCK_M=bm, BLOCK_N=bn)
    return out


def w8a8_linear(x, w_q, w_scale, bias=None, out_dtype=None, block=None):
    """x [..., K] float -> [..., N]: per-token int8 quantization, then `w8a8_matmul`."""
    if not x.is_floating_point():
        raise ValueError(f"x must be floating point, got {x.dtype}")
    x2 = x.reshape(-1, x.shape[-1])  # [M, K]
    a_q, a_s = quantize_per_token(x2)
    y = w8a8_matmul(a_q, a_s, w_q, w_scale, bias, out_dtype or x.dtype, block)
    return y.view(*x.shape[:-1], w_q.shape[0])
