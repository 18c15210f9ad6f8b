"""Triton W8A8 kernel against the int64 / float64 references (interpreter on CPU, compiled on GPU)."""

import pytest
import torch

from tessera.kernels.ngemm import gemm as G
from tessera.kernels.ngemm import reference as R
from tessera.kernels.ngemm.gemm_triton import quantize_per_token, w8a8_linear, w8a8_matmul

DEV = "cuda" if torch.cuda.is_available() else "cpu"
BLOCK = (16, 32, 32)  # the smallest tl.dot tile: the interpreter is slow


@pytest.mark.parametrize("M,N,K", [(1, 32, 32), (5, 40, 70), (17, 33, 96)])
def test_integer_core_exact_with_extremes(M, N, K):
    torch.manual_seed(M)
    a = torch.where(torch.rand(M, K) < 0.5, -128, 127).to(torch.int8)
    w = torch.randint(-128, 128, (N, K), dtype=torch.int8)
    w[0] = -128
    ones_m, ones_n = torch.ones(M), torch.ones(N)
    y = w8a8_matmul(a.to(DEV), ones_m.to(DEV), w.to(DEV), ones_n.to(DEV), block=BLOCK).cpu()
    assert torch.equal(y.double(), R.int_gemm(a, w).double())  # |sum| < 2**24: exact in fp32


@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16])
def test_linear_matches_cpu_kernels(out_dtype):
    torch.manual_seed(0)
    M, N, K = 3, 48, 80
    x, w, b = torch.randn(M, K), torch.randn(N, K) * 0.05, torch.randn(N)
    sw = w.abs().amax(1) / 127
    w_q = torch.round(w / sw[:, None]).clamp(-127, 127).to(torch.int8)
    y = w8a8_linear(x.to(DEV), w_q.to(DEV), sw.to(DEV), b.to(DEV), out_dtype=out_dtype, block=BLOCK).cpu()
    assert y.dtype == out_dtype and y.shape == (M, N)
    ref = R.w8a8(x, w_q, sw, b)
    tol = 1e-5 if out_dtype == torch.float32 else 1e-2
    assert (y.double() - ref).abs().max() < tol * (1 + ref.abs().max())
    cpu = G.int8_linear(x, G.pack_int8(w_q, sw, b), out_dtype=out_dtype, backend="torch")
    if out_dtype == torch.float32 and DEV == "cpu":  # interpreter: same fp32 ops, same order
        assert torch.equal(y, cpu)
    else:  # the interpreter's fp32 -> bf16 cast truncates; the C kernels round to nearest even
        assert ((y.float() - cpu.float()).abs() <= 2**-7 * cpu.float().abs() + 1e-6).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_quantizer_bit_identical_to_reference(dtype):
    """Ties (x * 127 / amax exactly k + 0.5), a zero row, K over one block, bf16 input."""
    torch.manual_seed(1)
    x = torch.randn(5, 300).to(dtype)
    x[1] = 0.0
    x[2, :6] = torch.tensor([127.0, 0.5, 1.5, 2.5, -0.5, -3.5])  # amax 127: y = x, ties both ways
    x[3, 0] = -1e4  # the row's amax from a negative value
    q, s = quantize_per_token(x.to(DEV), block=128)
    q_ref, s_ref = R.quantize_per_token(x)
    assert torch.equal(q.cpu(), q_ref) and torch.equal(s.cpu(), s_ref)
    assert q_ref[2, :6].tolist() == [127, 0, 2, 2, 0, -4]  # the ties went to even
    q0, s0 = quantize_per_token(torch.zeros(0, 8, dtype=dtype, device=DEV))  # no rows: no launch
    assert q0.shape == (0, 8) and s0.shape == (0,)


def test_bad_inputs():
    a, w, s = torch.zeros(2, 32, dtype=torch.int8), torch.zeros(4, 32, dtype=torch.int8), torch.ones(4)
    with pytest.raises(ValueError, match="K mismatch"):
        w8a8_matmul(a, torch.ones(2), torch.zeros(4, 16, dtype=torch.int8), s)
    with pytest.raises(ValueError, match="int8"):
        w8a8_matmul(a.float(), torch.ones(2), w, s)
    with pytest.raises(ValueError, match="contiguous"):
        w8a8_matmul(a, torch.ones(2), torch.zeros(32, 4, dtype=torch.int8).T, s)
    with pytest.raises(ValueError, match="a_scale"):
        w8a8_matmul(a, torch.ones(3), w, s)
    with pytest.raises(ValueError, match="contiguous rows"):
        quantize_per_token(torch.zeros(32, 4).T)


@pytest.mark.gpu
def test_gpu_larger_shapes():
    torch.manual_seed(0)
    for M, N, K in [(1, 4096, 4096), (1, 1024, 4096), (16, 1024, 14336), (64, 1024, 4096), (300, 14336, 4096)]:
        a = torch.randint(-128, 128, (M, K), dtype=torch.int8, device="cuda")
        w = torch.randint(-128, 128, (N, K), dtype=torch.int8, device="cuda")
        sa, sw = torch.rand(M, device="cuda") * 1e-3, torch.rand(N, device="cuda") * 1e-3
        y = w8a8_matmul(a, sa, w, sw)
        ref = R.int_gemm(a.cpu(), w.cpu()).double() * (sa.cpu().double()[:, None] * sw.cpu().double()[None])
        assert (y.cpu().double() - ref).abs().max() < 1e-5 * (1 + ref.abs().max())


@pytest.mark.gpu
def test_gpu_quantizer_exact():
    """Compiled (fp fusion off) = the CPU reference, bit for bit, on the engine's bf16 activations."""
    torch.manual_seed(0)
    for M, K in [(1, 4096), (16, 14336), (7, 1000)]:
        x = (torch.randn(M, K) * torch.rand(M, 1) * 10).to(torch.bfloat16)
        q, s = quantize_per_token(x.cuda())
        q_ref, s_ref = R.quantize_per_token(x)
        assert torch.equal(q.cpu(), q_ref) and torch.equal(s.cpu(), s_ref)
