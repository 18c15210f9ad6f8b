"""CPU W8A8 / W4A8 kernels against int64 / float64 references, on every ISA this CPU offers."""

from dataclasses import replace

import pytest
import torch

from tessera.kernels.ngemm import cpu_isa, library
from tessera.kernels.ngemm import gemm as G
from tessera.kernels.ngemm import reference as R
from tessera.kernels.ngemm.isa_ops import ISA_OPS
from tessera.kernels.ngemm.schedule import DEFAULT_SCHEDULES, AmxSchedule, Schedule, W4Schedule, W8Schedule
from tessera.kernels.ngemm.w8_kernel import W8Kernel

BACKENDS = [*cpu_isa.supported_isas(), "torch"]
# M covers 1, every M-tail of the 6-row micro-tile and a multi-tile case; N and K cover panel and k tails.
SHAPES = [(1, 1, 1), (1, 64, 64), (1, 65, 5), (2, 63, 7), (5, 130, 260), (6, 64, 12), (7, 200, 129),
          (13, 17, 33), (17, 129, 515), (9, 100, 128), (16, 70, 64), (24, 65, 192)]  # last 2: AMX 16/32-row


_RAW_ENTRY = {W8Kernel.SIGN: "tq_w8a8_s", W8Kernel.VECTOR: "tq_w8a8", W8Kernel.AMX16: "tq_w8a8_amx16",
              W8Kernel.AMX32: "tq_w8a8_amx"}


def int8_matmul_exact(a_q: torch.Tensor, pw: G.PackedInt8Weight, backend=None) -> torch.Tensor:
    """The W8A8 integer core alone: a_q [M, K] int8 (any value, -128 included) -> [M, N] int32, through
    the kernels `int8_linear` would choose; their drivers store raw sums when given a `raw` buffer."""
    assert a_q.dtype == torch.int8 and a_q.is_contiguous() and a_q.shape[1] == pw.k
    name, lib = library.resolve_backend(backend)
    if name == "torch":
        return torch._int_mm(a_q, G.unpack_int8(pw).T)
    M, Kp = a_q.shape[0], pw.data.shape[1] * 4
    kernel = lib.w8_kernel(M, Kp, pw.sign_ok)
    rows = kernel.a_rows(M)  # AMX pad rows become u8 128 = int8 0 below
    u = torch.nn.functional.pad(a_q, (0, Kp - pw.k, 0, rows - M)).view(torch.uint8) ^ 0x80  # [rows, Kp]: a + 128
    raw = torch.empty(M, pw.n, dtype=torch.int32)
    entry = getattr(lib.handle, _RAW_ENTRY[kernel])
    entry(u.data_ptr(), None, pw.data.data_ptr(), pw.colsum.data_ptr(), None, None, None, 0, raw.data_ptr(),
          M, pw.n, Kp, torch.get_num_threads())
    return raw


@pytest.fixture(autouse=True)
def _seed_and_one_thread():
    torch.manual_seed(0)
    nt = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny shapes; a loaded CI box punishes OpenMP barriers. See test_threads_*.
    yield
    torch.set_num_threads(nt)


@pytest.mark.parametrize("backend", BACKENDS)
def test_threads_and_large_m_paths(backend):
    # > 1M MACs runs the OpenMP path; M >= 16 and K % 64 == 0 runs the AMX tiles where available.
    M, N, K = 70, 300, 1024
    a = torch.randint(-128, 128, (M, K), dtype=torch.int8)
    w = torch.randint(-128, 128, (N, K), dtype=torch.int8)
    pw = G.pack_int8(w, torch.rand(N) * 1e-3)
    x = torch.randn(M, K)
    torch.set_num_threads(2)
    got2, y2 = int8_matmul_exact(a, pw, backend=backend), G.int8_linear(x, pw, backend=backend)
    torch.set_num_threads(1)
    assert torch.equal(got2.long(), R.int_gemm(a, w))
    assert torch.equal(y2, G.int8_linear(x, pw, backend=backend))
    assert torch.equal(y2, G.int8_linear(x, pw, backend="torch"))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("M,N,K", SHAPES)
def test_w8a8_integer_core_is_exact(backend, M, N, K):
    w = torch.randint(-128, 128, (N, K), dtype=torch.int8)
    a = torch.randint(-128, 128, (M, K), dtype=torch.int8)
    got = int8_matmul_exact(a, G.pack_int8(w, torch.ones(N)), backend=backend)
    assert got.dtype == torch.int32 and got.shape == (M, N)
    assert torch.equal(got.long(), R.int_gemm(a, w))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("av,wv", [(-128, -128), (127, -128), (-128, 127), (127, 127)])
def test_w8a8_extremes_do_not_saturate(backend, av, wv):
    # K = 4096 of -128 * -128 is the largest |sum| an LLM shape produces; AVX2's vpmaddubsw would
    # saturate its s16 pairs here without the bit-7 split.
    M, N, K = 3, 80, 4096
    a = torch.full((M, K), av, dtype=torch.int8)
    w = torch.full((N, K), wv, dtype=torch.int8)
    got = int8_matmul_exact(a, G.pack_int8(w, torch.ones(N)), backend=backend)
    assert torch.equal(got.long(), torch.full((M, N), av * wv * K))
    a2, w2 = _extremes(M, K), _extremes(N, K)
    got2 = int8_matmul_exact(a2, G.pack_int8(w2, torch.ones(N)), backend=backend)
    assert torch.equal(got2.long(), R.int_gemm(a2, w2))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("M,N,K", [(1, 65, 5), (7, 200, 129), (17, 129, 515), (3, 80, 4096)])
def test_w8a8_weights_without_minus128_are_exact(backend, M, N, K):
    # Weights in [-127, 127] (what quantize_weight_int8 makes) take AVX2's sign-trick kernels:
    # a * w = |a| * sign(w, a); |a| = 128 for a = -128 must still not saturate a vpmaddubsw pair.
    w = torch.randint(-127, 128, (N, K), dtype=torch.int8)
    w[0, :] = torch.where(torch.arange(K) % 2 == 0, -127, 127).to(torch.int8)
    a = torch.randint(-128, 128, (M, K), dtype=torch.int8)
    a[0, :] = -128
    pw = G.pack_int8(w, torch.ones(N))
    assert pw.sign_ok and not G.pack_int8(torch.full((N, K), -128, dtype=torch.int8), torch.ones(N)).sign_ok
    assert torch.equal(int8_matmul_exact(a, pw, backend=backend).long(), R.int_gemm(a, w))


def _extremes(*shape):
    """Random tensor of only -128 and 127."""
    return torch.where(torch.rand(*shape) < 0.5, -128, 127).to(torch.int8)


def _rel(y, ref):
    return ((y.double() - ref).norm() / ref.norm()).item()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("M,N,K", [(1, 96, 256), (7, 130, 260), (16, 64, 1024)])
def test_w8a8_linear_matches_references(backend, M, N, K):
    x, w, b = torch.randn(M, K), torch.randn(N, K) * 0.05, torch.randn(N)
    sw = w.abs().amax(1) / 127
    w_q = torch.round(w / sw[:, None]).clamp(-127, 127).to(torch.int8)
    pw = G.pack_int8(w_q, sw, b)
    y = G.int8_linear(x, pw, backend=backend)
    assert y.shape == (M, N) and y.dtype == torch.float32
    # Same integers, fp32 epilogue: within fp32 rounding of the float64 dequantised reference.
    assert (y.double() - R.w8a8(x, w_q, sw, b)).abs().max() < 1e-5 * (1 + y.abs().max())
    # Quantization error against the unquantized fp32 linear: ~1 % relative on Gaussian data.
    assert _rel(y, torch.nn.functional.linear(x, w, b).double()) < 0.02
    # Every backend gives bit-identical outputs (same integer core, same fp32 op order).
    assert torch.equal(y, G.int8_linear(x, pw, backend="torch"))


@pytest.mark.parametrize("backend", BACKENDS)
def test_bf16_in_and_out(backend):
    x = torch.randn(2, 3, 200).to(torch.bfloat16)  # leading dims are flattened and restored
    w_q = torch.randint(-127, 128, (70, 200), dtype=torch.int8)
    pw = G.pack_int8(w_q, torch.rand(70) * 1e-3)
    y = G.int8_linear(x, pw, backend=backend)
    assert y.shape == (2, 3, 70) and y.dtype == torch.bfloat16
    y32 = G.int8_linear(x, pw, out_dtype=torch.float32, backend=backend)
    assert torch.equal(y, y32.to(torch.bfloat16))  # the C epilogue rounds to nearest even like torch
    pw4 = G.pack_int4(torch.randint(-8, 8, (70, 256), dtype=torch.int8), torch.rand(70, 8) * 1e-2, 32)
    x4 = torch.randn(5, 256).to(torch.bfloat16)
    assert torch.equal(G.int4_linear(x4, pw4, backend=backend), G.int4_linear(x4, pw4, backend="torch"))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("M,N,K,g", [(1, 64, 32, 32), (1, 200, 512, 128), (3, 70, 256, 64), (4, 129, 512, 256)])
def test_w4a8_integer_core_is_exact(backend, M, N, K, g):
    # Unit scales make the output an integer; fp32 holds it exactly while |sum| < 2**24.
    q = torch.randint(-8, 8, (N, K), dtype=torch.int8)
    q[0] = -8  # extremes of both operands
    q[1] = 7  # u4 = 15 against +-127: the AVX2 kernel's s16 block sums reach +-30480 (no saturation)
    x = torch.randint(-127, 128, (M, K)).float()
    x[0, :] = 127.0
    x[-1, 1:] = -127.0 if M > 1 else 127.0
    x[:, 0] = -127.0  # amax stays 127: the quantizer then returns x itself with scale 1
    pw = G.pack_int4(q, torch.ones(N, K // g), g)
    y = G.int4_linear(x, pw, backend=backend)
    assert torch.equal(y.double(), R.int_gemm(x.to(torch.int8), q).double())


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("M,N,K,g", [(1, 96, 256, 32), (6, 130, 512, 128), (9, 64, 256, 64)])
def test_w4a8_linear_matches_references(backend, M, N, K, g):
    x, w, b = torch.randn(M, K), torch.randn(N, K) * 0.05, torch.randn(N)
    sc = w.view(N, K // g, g).abs().amax(-1) / 7  # [N, K/g]
    q = torch.round(w.view(N, K // g, g) / sc[..., None]).clamp(-8, 7).to(torch.int8).view(N, K)
    pw = G.pack_int4(q, sc, g, b)
    y = G.int4_linear(x, pw, backend=backend)
    assert (y.double() - R.w4a8(x, q, sc, g, b)).abs().max() < 1e-5 * (1 + y.abs().max())
    assert _rel(y, torch.nn.functional.linear(x, w, b).double()) < 0.15  # int4: ~8-10 % on Gaussian weights
    assert torch.equal(y, G.int4_linear(x, pw, backend="torch"))


def test_custom_schedule_compiles_and_is_exact():
    isa = cpu_isa.supported_isas()[0] if cpu_isa.supported_isas() else pytest.skip("no x86 SIMD ISA")
    lanes = ISA_OPS[isa].lanes
    s = Schedule(isa, w8=W8Schedule(mr=3, nr=2 * lanes, k_unroll=3, prefetch=0),
                 w4=W4Schedule(mr=2, nr=lanes, k_unroll=3, prefetch=0),
                 amx=AmxSchedule(min_m=16) if isa == "amx" else None)
    a = torch.randint(-128, 128, (8, 77), dtype=torch.int8)
    w = torch.randint(-128, 128, (100, 77), dtype=torch.int8)
    assert torch.equal(int8_matmul_exact(a, G.pack_int8(w, torch.ones(100)), backend=s).long(), R.int_gemm(a, w))
    # W4A8 with its own micro-tile width (w4.nr != w8.nr), as one tile or as passes over the whole panel
    x, q4 = torch.randn(5, 128), torch.randint(-8, 8, (100, 128), dtype=torch.int8)
    pw4 = G.pack_int4(q4, torch.rand(100, 4) + 0.1, 32)
    panel = replace(s, w8=replace(s.w8, prefetch=2), w4=replace(s.w4, panel=True, prefetch=3))
    # multi-row W4A8 micro-tiles with their own pass width (5 rows: a 3-row and a 2-row tile)
    rows = replace(panel, w4=replace(panel.w4, mr=3, nr=2 * lanes, nr_rows=lanes))
    for sched in (s, panel, rows):
        assert torch.equal(G.int4_linear(x, pw4, backend=sched), G.int4_linear(x, pw4, backend="torch"))
    with pytest.raises(ValueError, match="needs panel"):
        replace(s.w4, nr_rows=lanes)
    with pytest.raises(ValueError, match="w4.nr_rows="):
        replace(panel, w4=replace(panel.w4, nr_rows=3 * lanes))
    with pytest.raises(ValueError, match="w8.nr="):
        replace(s, w8=W8Schedule(mr=1, nr=48, k_unroll=1, prefetch=0))
    with pytest.raises(ValueError, match="w4.nr="):
        replace(s, w4=W4Schedule(mr=1, nr=24, k_unroll=1, prefetch=0))
    with pytest.raises(ValueError, match="bad schedule"):
        replace(s, w4=replace(s.w4, prefetch=-1))
    with pytest.raises(ValueError, match="AmxSchedule"):
        Schedule("avx2", s.w8, s.w4, AmxSchedule(min_m=16))


@pytest.mark.parametrize("M", [16, 40])  # the 16-row and the 32-row AMX kernel
def test_amx_prefetch_schedule_is_exact(M):
    # the B prefetch runs past the last panel's end (prefetches never fault); results must not change
    if "amx" not in cpu_isa.supported_isas():
        pytest.skip("no AMX on this CPU")
    s = replace(DEFAULT_SCHEDULES["amx"], amx=replace(DEFAULT_SCHEDULES["amx"].amx, prefetch=3))
    a = torch.randint(-128, 128, (M, 320), dtype=torch.int8)
    w = torch.randint(-128, 128, (130, 320), dtype=torch.int8)
    assert torch.equal(int8_matmul_exact(a, G.pack_int8(w, torch.ones(130)), backend=s).long(), R.int_gemm(a, w))


def test_pack_roundtrip():
    w = torch.randint(-128, 128, (70, 13), dtype=torch.int8)
    pw = G.pack_int8(w, torch.ones(70))
    assert pw.data.shape == (2, 4, 64, 4) and torch.equal(G.unpack_int8(pw), w)
    assert torch.equal(pw.colsum[:70], w.sum(1, dtype=torch.int32)) and (pw.colsum[70:] == 0).all()


def test_bad_inputs_raise_clear_errors():
    pw = G.pack_int8(torch.zeros(8, 16, dtype=torch.int8), torch.ones(8))
    with pytest.raises(ValueError, match="K=15"):
        G.int8_linear(torch.randn(2, 15), pw)
    with pytest.raises(ValueError, match="contiguous"):
        G.int8_linear(torch.randn(16, 2).T, pw)
    with pytest.raises(ValueError, match="float32 or bfloat16"):
        G.int8_linear(torch.randn(2, 16, dtype=torch.float64), pw)
    with pytest.raises(ValueError, match="dtype"):
        G.pack_int8(torch.zeros(8, 16, dtype=torch.int32), torch.ones(8))
    with pytest.raises(ValueError, match="contiguous"):
        G.pack_int8(torch.zeros(16, 8, dtype=torch.int8).T, torch.ones(8))
    with pytest.raises(ValueError, match="shape"):
        G.pack_int8(torch.zeros(8, 16, dtype=torch.int8), torch.ones(9))
    q4 = torch.zeros(8, 96, dtype=torch.int8)
    with pytest.raises(ValueError, match="unsupported group size 48"):
        G.pack_int4(q4, torch.ones(8, 2), 48)
    with pytest.raises(ValueError, match="multiple of the group size"):
        G.pack_int4(q4, torch.ones(8, 1), 64)
    with pytest.raises(ValueError, match=r"\[-8, 7\]"):
        G.pack_int4(q4 + 8, torch.ones(8, 3), 32)
    with pytest.raises(ValueError, match="unknown backend"):
        G.int8_linear(torch.randn(1, 16), pw, backend="sse9")
    with pytest.raises(ValueError, match="out_dtype"):
        G.int8_linear(torch.randn(1, 16), pw, out_dtype=torch.float16)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("where", [0, 40, 82])  # the row maximum in the first block, a middle one, the K tail
def test_activation_scale_sees_every_column(backend, where):
    # The C quantizer keeps 16 running maxima plus a scalar tail (K = 83 = 5 * 16 + 3); a maximum
    # missed anywhere would change the scale and so every output.
    M, N, K = 3, 20, 83
    x = torch.randn(M, K) * 0.1
    x[:, where] = torch.tensor([9.0, -7.0, 5.0])
    w_q = torch.randint(-127, 128, (N, K), dtype=torch.int8)
    pw = G.pack_int8(w_q, torch.rand(N) * 1e-2)
    for xin in (x, x.bfloat16()):
        assert torch.equal(G.int8_linear(xin, pw, backend=backend), G.int8_linear(xin, pw, backend="torch"))
