"""A compiled kernel library, what it offers, and which one serves a call (`resolve_backend`)."""

from __future__ import annotations

import ctypes
import functools
import warnings
from dataclasses import dataclass

from tessera.kernels.ngemm import ccache, codegen, cpu_isa
from tessera.kernels.ngemm.schedule import DEFAULT_SCHEDULES, Schedule
from tessera.kernels.ngemm.w8_kernel import W8Kernel

_P, _L, _I = ctypes.c_void_p, ctypes.c_long, ctypes.c_int
_W8_ARGTYPES = [_P, _P, _P, _P, _P, _P, _P, _I, _P, _L, _L, _L, _I]


@dataclass(frozen=True)
class KernelLibrary:
    handle: ctypes.CDLL  # the C entry points, argtypes declared
    isa: str
    sign_kernels: bool  # has tq_w8a8_s, the AVX2 sign-trick kernels for weights without -128
    amx_min_m: int  # W8A8 calls with M >= this use AMX tiles; 0: never (no AMX, or the OS refused it)

    def w8_kernel(self, m: int, kp: int, sign_ok: bool) -> W8Kernel:
        """The W8A8 kernels for an [m, kp] activation; sign_ok: the weight holds no -128."""
        if self.amx_min_m and m >= self.amx_min_m and kp % 64 == 0:
            return W8Kernel.AMX16 if m <= 16 else W8Kernel.AMX32
        return W8Kernel.SIGN if self.sign_kernels and sign_ok else W8Kernel.VECTOR


def bind(handle: ctypes.CDLL, isa: str, amx_min_m: int) -> KernelLibrary:
    """Declare the C signatures of a loaded library and record what it offers. amx_min_m (the
    schedule's AMX threshold) is kept only when the library has AMX kernels and the OS grants the tiles."""
    for name in ("tq_quant_f32", "tq_quant_bf16"):
        getattr(handle, name).argtypes = [_P, _L, _L, _L, _I, _P, _P, _L, _P, _I]
    handle.tq_w8a8.argtypes = _W8_ARGTYPES
    handle.tq_w4a8.argtypes = [_P, _P, _P, _P, _P, _P, _P, _I, _L, _L, _L, _L, _I]
    handle.tq_w8a8_x.argtypes = [_P, _I, _L, _L, _P, _P, _P, _P, _P, _I, _L, _L, _L, _I, _I]
    handle.tq_w4a8_x.argtypes = [_P, _I, _L, _L, _P, _P, _P, _P, _I, _L, _L, _I]
    sign = hasattr(handle, "tq_w8a8_s")
    if sign:
        handle.tq_w8a8_s.argtypes = _W8_ARGTYPES
    if not hasattr(handle, "tq_amx_init"):
        amx_min_m = 0
    elif amx_min_m:
        handle.tq_w8a8_amx.argtypes = handle.tq_w8a8_amx16.argtypes = _W8_ARGTYPES
        if handle.tq_amx_init() != 0:  # the kernel must let this process use the AMX tile state
            warnings.warn("AMX tiles refused by the OS; using the AVX512-VNNI kernels", stacklevel=3)
            amx_min_m = 0
    return KernelLibrary(handle, isa, sign, amx_min_m)


@functools.cache
def load_library(s: Schedule) -> KernelLibrary | None:
    """Generate, compile (once per machine, cached) and load the kernels of schedule `s`; None on failure."""
    try:
        handle = ccache.build(codegen.generate(s), codegen.flags(s), f"tessera_int8_{s.isa}")
    except (ccache.CompileError, OSError) as e:
        warnings.warn(f"int8 kernels for {s.isa} unavailable, using the torch fallback: {e}", stacklevel=2)
        return None
    return bind(handle, s.isa, s.amx.min_m if s.amx else 0)


_RESOLVED: dict = {}  # backend -> (name, library): a lookup per call instead of a resolution


def resolve_backend(backend) -> tuple[str, KernelLibrary | None]:
    """backend: None (best for this CPU), an ISA name, "torch", a `Schedule` or a loaded `KernelLibrary`.
    `$TESSERA_INT8_ISA` is read when None is first resolved, not per call: an environment lookup is a
    measurable share of a small call (`_RESOLVED.clear()` re-reads it)."""
    hit = _RESOLVED.get(backend)
    if hit is None:
        hit = _RESOLVED[backend] = _resolve(backend)
    return hit


def _resolve(backend) -> tuple[str, KernelLibrary | None]:
    if isinstance(backend, KernelLibrary):
        return backend.isa, backend
    sched = backend if isinstance(backend, Schedule) else None
    name = sched.isa if sched else (backend or cpu_isa.best_backend())
    if name not in cpu_isa.ALL_BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of {cpu_isa.ALL_BACKENDS}")
    if name != "torch" and name not in cpu_isa.supported_isas():
        raise ValueError(f"this CPU does not support {name!r} (supported: {cpu_isa.supported_isas()})")
    lib = None if name == "torch" else load_library(sched or DEFAULT_SCHEDULES[name])
    return (name if lib is not None else "torch"), lib
