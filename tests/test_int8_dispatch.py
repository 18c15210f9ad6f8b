"""ISA dispatch, the no-compiler fallback and the kernel cache of the CPU int8 GEMM."""

import pytest
import torch

from tessera.kernels.ngemm import ccache, codegen, cpu_isa
from tessera.kernels.ngemm import gemm as G


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
    G.load_library.cache_clear()
    G._RESOLVED.clear()
    try:
        with pytest.warns(UserWarning, match="torch fallback"):
            name, lib = G.resolve_backend(None)
        assert name == "torch" and lib is None
        assert torch.equal(G.int8_linear(x, pw), want)
    finally:
        G.load_library.cache_clear()
        G._RESOLVED.clear()


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
    for s in codegen.DEFAULT_SCHEDULES.values():  # artifacts must run on any CPU with the ISA
        assert not any("native" in f for f in (*ccache.BASE_FLAGS, *codegen.flags(s)))


def test_forced_isa_is_read_at_first_resolution(monkeypatch):
    """`TESSERA_INT8_ISA` is read once per process (per `_RESOLVED.clear()`), not on every call."""
    monkeypatch.setenv("TESSERA_INT8_ISA", "torch")
    G._RESOLVED.clear()
    try:
        assert G.resolve_backend(None) == ("torch", None)
        monkeypatch.delenv("TESSERA_INT8_ISA")
        assert G.resolve_backend(None) == ("torch", None)  # cached: no env read per call
        G._RESOLVED.clear()
        assert G.resolve_backend(None)[0] == cpu_isa.best_backend()
    finally:
        G._RESOLVED.clear()
