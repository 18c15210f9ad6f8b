"""Tile helpers shared by the Triton ops (written once, not copied per op)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from tessera.distributed import waits

TORCH_TO_TL = {torch.float32: tl.float32, torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}


@triton.jit
def gemm_tile(a, b, offs_m, offs_n, M, N, K, s_am, s_ak, s_bk, s_bn,
              BK: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, F32_DOT: tl.constexpr):
    """acc[BM, BN] (fp32) = A[offs_m, :] @ B[:, offs_n], masked at the matrix edges.
    F32_DOT upcasts the operands (the interpreter's bf16 dot is wrong; exact fp32 on CPU)."""
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    offs_k = tl.arange(0, BK)
    for k0 in range(0, K, BK):
        ks = k0 + offs_k
        a_t = tl.load(a + offs_m[:, None] * s_am + ks[None, :] * s_ak,
                      mask=(offs_m[:, None] < M) & (ks[None, :] < K), other=0.0)  # [BM, BK]
        b_t = tl.load(b + ks[:, None] * s_bk + offs_n[None, :] * s_bn,
                      mask=(ks[:, None] < K) & (offs_n[None, :] < N), other=0.0)  # [BK, BN]
        if F32_DOT:
            acc = tl.dot(a_t.to(tl.float32), b_t.to(tl.float32), acc, input_precision="ieee")
        else:
            acc = tl.dot(a_t, b_t, acc)
    return acc


@triton.jit
def round_to(x, dtype: tl.constexpr, FIX_RNE: tl.constexpr):
    """fp32 -> dtype with round-to-nearest-even. The interpreter truncates fp32 -> bf16 (even with
    fp_downcast_rounding="rtne"); FIX_RNE rounds in integer arithmetic first (NaN not special-cased)."""
    if FIX_RNE and dtype == tl.bfloat16:
        u = x.to(tl.uint32, bitcast=True)
        u = (u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000
        x = u.to(tl.float32, bitcast=True)
    return x.to(dtype)


def f32_dot(dtype: torch.dtype) -> bool:
    """Upcast in the interpreter (its bf16 dot is broken) and for fp32 on GPU (no TF32 surprise)."""
    return waits.interpreted() or dtype == torch.float32


def launch_grid(n_programs: int, heap) -> tuple:
    """Axis 1 carries the rank when several virtual ranks share one device."""
    return (n_programs, heap.world) if heap.virtual else (n_programs,)


def local_error(*checks) -> str | None:
    """Run argument checks (thunks); return the first ValueError's message instead of raising, so
    the op can share it with its peers through `heap.barrier(error)`."""
    try:
        for check in checks:
            check()
    except ValueError as e:
        return str(e)
    return None


def check_matrix(name: str, t: torch.Tensor, shape: tuple, dtype: torch.dtype, device) -> None:
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name}: expected shape {tuple(shape)}, got {tuple(t.shape)}")
    if t.dtype != dtype:
        raise ValueError(f"{name}: expected dtype {dtype}, got {t.dtype}")
    if t.device.type != torch.device(device).type:
        raise ValueError(f"{name}: expected a {torch.device(device).type} tensor, got {t.device}")
