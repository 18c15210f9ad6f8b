"""The vector vocabulary of each ISA the code generator targets: register types, intrinsics, gcc flags.

Intrinsic patterns are `string.Template`s with `${NAME}` placeholders, the convention of every C
template of the generator (C's braces need no escaping in them).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from string import Template

from tessera.kernels.ngemm.layout import PANEL


@dataclass(frozen=True)
class IsaOps:
    lanes: int  # 32-bit lanes per vector register
    vi: str  # integer vector type
    vf: str  # float vector type
    prefix: str  # intrinsic prefix: _mm512 or _mm256
    zero: str  # a zeroed integer vector
    and_: str  # bitwise and of integer vectors
    load_tpl: Template  # unaligned integer load of ${ptr}
    store_tpl: Template  # unaligned integer store of ${val} to ${ptr}
    # ${c} += dot4(${u}: unsigned bytes, ${s}: signed bytes) per 32-bit lane. AVX2 has no vpdpbusd:
    # vpmaddubsw + vpmaddwd, exact only while a pair sum fits s16 (the emitters make sure it does).
    dot_tpl: Template
    flags: tuple[str, ...]  # gcc flags: explicit, never -march=native (see ccache)

    def load(self, ptr: str) -> str:
        return self.load_tpl.substitute(ptr=ptr)

    def store(self, ptr: str, val: str) -> str:
        return self.store_tpl.substitute(ptr=ptr, val=val)

    def dot(self, c: str, u: str, s: str) -> str:
        return self.dot_tpl.substitute(c=c, u=u, s=s)


_ZMM = dict(lanes=16, vi="__m512i", vf="__m512", prefix="_mm512", zero="_mm512_setzero_si512()",
            and_="_mm512_and_si512", load_tpl=Template("_mm512_loadu_si512((const void*)(${ptr}))"),
            store_tpl=Template("_mm512_storeu_si512((void*)(${ptr}), ${val})"))
_YMM = dict(lanes=8, vi="__m256i", vf="__m256", prefix="_mm256", zero="_mm256_setzero_si256()",
            and_="_mm256_and_si256", load_tpl=Template("_mm256_loadu_si256((const __m256i*)(${ptr}))"),
            store_tpl=Template("_mm256_storeu_si256((__m256i*)(${ptr}), ${val})"))

ISA_OPS = {
    "avx512vnni": IsaOps(**_ZMM, dot_tpl=Template("${c} = _mm512_dpbusd_epi32(${c}, ${u}, ${s});"),
                         flags=("-mavx2", "-mfma", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512vnni")),
    "avxvnni": IsaOps(**_YMM, dot_tpl=Template("${c} = _mm256_dpbusd_avx_epi32(${c}, ${u}, ${s});"),
                      flags=("-mavx2", "-mfma", "-mavxvnni")),
    "avx2": IsaOps(**_YMM, dot_tpl=Template(
        "${c} = _mm256_add_epi32(${c}, _mm256_madd_epi16(_mm256_maddubs_epi16(${u}, ${s}), ones));"),
        flags=("-mavx2", "-mfma")),
}
# AMX = the AVX512-VNNI micro-kernels for small M plus AMX tiles for large M.
ISA_OPS["amx"] = dataclasses.replace(ISA_OPS["avx512vnni"],
                                     flags=(*ISA_OPS["avx512vnni"].flags, "-mamx-tile", "-mamx-int8"))


def prefetch_b(dist: int, cols: int, ptr: str) -> list[str]:
    """Prefetch the B lines of one k-step of a `cols`-column sub-panel, dist k-steps past ptr (0: none)."""
    if not dist:
        return []
    lines = max(1, cols * 4 // 64)  # cache lines of B consumed per k-step by a cols-column sub-panel
    return [f"_mm_prefetch((const char*)({ptr} + {dist * PANEL * 4 + 64 * i}), _MM_HINT_T0);"
            for i in range(lines)]
