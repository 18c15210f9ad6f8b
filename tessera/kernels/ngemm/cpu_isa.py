"""Which x86 integer-dot-product ISA this CPU (and OS) offers, for the int8 GEMM dispatch.

Order of preference, best first, by int8 multiply-add throughput per core (peak figures measured on
the project's VMs are in docs/ngemm.md): AMX-INT8 (`tdpbusd`; some hypervisors hide it) >
AVX512-VNNI (`vpdpbusd zmm`) > AVX-VNNI (`vpdpbusd ymm`) > AVX2 (`vpmaddubsw` + `vpmaddwd`) > the
plain torch fallback.

Linux clears a `/proc/cpuinfo` flag when the kernel did not enable the matching XSAVE state, so the
flags already account for OS support. `TESSERA_INT8_ISA` forces a choice (tests, benchmarks).
"""

from __future__ import annotations

import functools
import os

#: ISA name -> the cpuinfo flags it needs. Order is the dispatch preference.
ISA_FLAGS: dict[str, tuple[str, ...]] = {
    # AMX-INT8 tiles (Sapphire Rapids+), plus the AVX512-VNNI kernels for small M. The OS must also
    # grant the tile state (arch_prctl); `library.bind` asks and falls back if refused.
    "amx": ("amx_tile", "amx_int8", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx2", "fma"),
    "avx512vnni": ("avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx2", "fma"),
    "avxvnni": ("avx_vnni", "avx2", "fma"),
    "avx2": ("avx2", "fma"),
}
ALL_BACKENDS = (*ISA_FLAGS, "torch")


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()  # not Linux or no cpuinfo: only the torch fallback is safe


def supported_isas() -> list[str]:
    """The C-kernel ISAs this CPU can run, best first."""
    flags = cpu_flags()
    return [isa for isa, need in ISA_FLAGS.items() if all(f in flags for f in need)]


def best_backend() -> str:
    """`TESSERA_INT8_ISA` if set, else the best supported ISA, else 'torch'."""
    forced = os.environ.get("TESSERA_INT8_ISA")
    if forced:
        if forced not in ALL_BACKENDS:
            raise ValueError(f"TESSERA_INT8_ISA={forced!r}; choose one of {ALL_BACKENDS}")
        return forced
    isas = supported_isas()
    return isas[0] if isas else "torch"
