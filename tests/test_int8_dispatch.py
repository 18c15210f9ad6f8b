"""ISA dispatch, the no-compiler fallback and the kernel cache of the CPU int8 GEMM."""

import pytest
import torch

from tessera.kernels.ngemm import ccache, codegen, cpu_isa, library
from tessera.kernels.ngemm import gemm as G
from tessera.kernels.ngemm.schedule import DEFAULT_SCHEDULES
from tessera.kernels.ngemm.w8_kernel import W8Kernel, c_enum


def test_dispatch_prefers_the_best_isa(monkeypatch):
    monkeypatch.delenv("TESSERA_INT8_ISA", raising=False)
    isas = cpu_isa.supported_isas()
    assert cpu_isa.best_backend() == (isas[0] if isas else "torch")
    monkeypatch.setattr(cpu_isa, "cpu_flags", lambda: frozenset({"avx2", "fma"}))
    assert cpu_isa.supported_isas() == ["avx2"]
    monkeypatch.setattr(cpu_isa, "cpu_flags", lambda: frozenset({"sse2"}))
    assert cpu_isa.best_backend() == "torch"
    monkeypatch.setenv("TESSERA_INT8_ISA", "avx9000")
    with pytest.raises(ValueError, match="TESSERA_INT8_ISA"):
        cpu_isa.best_backend()


def test_no_compiler_falls_back_to_torch_with_same_results(monkeypatch, tmp_path):
    if not cpu_isa.supported_isas():
        pytest.skip("no x86 SIMD ISA")
    x = torch.randn(3, 100)
    pw = G.pack_int8(torch.randint(-128, 128, (70, 100), dtype=torch.int8), torch.rand(70))
    want = G.int8_linear(x, pw)  # compiled kernel
    monkeypatch.setenv("TESSERA_KERNEL_CACHE", str(tmp_path))  # empty cache: a build would be needed
    monkeypatch.setattr(ccache, "compiler", lambda: None)
    library.load_library.cache_clear()
    library._RESOLVED.clear()
    try:
        with pytest.warns(UserWarning, match="torch fallback"):
            name, lib = library.resolve_backend(None)
        assert name == "torch" and lib is None
        assert torch.equal(G.int8_linear(x, pw), want)
    finally:
        library.load_library.cache_clear()
        library._RESOLVED.clear()


def test_cache_key_and_flags(monkeypatch, tmp_path):
    if ccache.compiler() is None:
        pytest.skip("no C compiler")
    monkeypatch.setenv("TESSERA_KERNEL_CACHE", str(tmp_path))
    src = "int tq_answer(void) { return 42; }\n"
    assert ccache.build(src, (), "probe").tq_answer() == 42
    assert ccache.build(src, (), "probe").tq_answer() == 42  # cache hit: no second file
    assert len(list(tmp_path.glob("probe-*.so"))) == 1
    ccache.build(src.replace("42", "43"), (), "probe")  # changed source: new key
    ccache.build(src, ("-DX=1",), "probe")  # changed flags: new key
    assert len(list(tmp_path.glob("probe-*.so"))) == 3
    with pytest.raises(ccache.CompileError, match="failed"):
        ccache.build("this is not C", (), "broken")
    for s in DEFAULT_SCHEDULES.values():  # artifacts must run on any CPU with the ISA
        assert not any("native" in f for f in (*ccache.BASE_FLAGS, *codegen.flags(s)))


def test_forced_isa_is_read_at_first_resolution(monkeypatch):
    """`TESSERA_INT8_ISA` is read once per process (per `_RESOLVED.clear()`), not on every call."""
    monkeypatch.setenv("TESSERA_INT8_ISA", "torch")
    library._RESOLVED.clear()
    try:
        assert library.resolve_backend(None) == ("torch", None)
        monkeypatch.delenv("TESSERA_INT8_ISA")
        assert library.resolve_backend(None) == ("torch", None)  # cached: no env read per call
        library._RESOLVED.clear()
        assert library.resolve_backend(None)[0] == cpu_isa.best_backend()
    finally:
        library._RESOLVED.clear()


def test_w8_kernel_choice():
    """M and K pick AMX blocks, sign-trick or vector kernels; the C enum carries the same values."""
    amx = library.KernelLibrary(handle=None, isa="amx", sign_kernels=False, amx_min_m=16)
    assert [amx.w8_kernel(m, 128, True) for m in (1, 15, 16, 17, 40)] == [W8Kernel.VECTOR] * 2 + [
        W8Kernel.AMX16, W8Kernel.AMX32, W8Kernel.AMX32]
    assert amx.w8_kernel(40, 100, True) == W8Kernel.VECTOR  # AMX needs Kp % 64 == 0
    avx2 = library.KernelLibrary(handle=None, isa="avx2", sign_kernels=True, amx_min_m=0)
    assert avx2.w8_kernel(40, 128, sign_ok=True) == W8Kernel.SIGN
    assert avx2.w8_kernel(40, 128, sign_ok=False) == W8Kernel.VECTOR
    assert [k.a_rows(17) for k in W8Kernel] == [17, 17, 32, 32]
    # csrc/fused.c runs the AMX kernels for values above VECTOR and the sign-trick kernels below it
    assert [k for k in W8Kernel if k < W8Kernel.VECTOR] == [W8Kernel.SIGN]
    assert c_enum() in codegen.generate(DEFAULT_SCHEDULES["avx2"])
