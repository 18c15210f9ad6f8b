"""W4A8 micro-kernels: int4 weights with per-group scales against int8 activations.

Here the *weights* are the unsigned operand (u4 = q + 8, two per byte, see `layout`) and the
activations stay signed, so the correction is 8 * (sum of the group's activations). Each group's int32
partial goes to fp32 and is multiplied by the group scale, then added (no FMA: the torch fallback
rounds the same way).

AVX2: a `vpmaddubsw` pair sum is at most 2 * 15 * 128 = 3840 (u4 weight x s8 activation), so it cannot
saturate, and 8 of them, the lo and hi nibble products of `W4_S16_STEPS` = 4 k-steps, add up in s16
(<= 30720 < 32767) before one `vpmaddwd` widens them: 2.25 multiply uops per 64 products instead of 4
(the integer multiplier bounds AVX2 int8 on Zen 1: docs/ngemm.md). Every supported group (32 ... 256)
is a whole number of 4-step blocks.
"""

from __future__ import annotations

from tessera.kernels.ngemm.isa_ops import ISA_OPS, prefetch_b
from tessera.kernels.ngemm.schedule import Schedule

W4_S16_STEPS = 4
# The AVX2 kernel ends every k-step with an empty asm that "rewrites" the s16 sums. Without it gcc
# reassociates the unrolled steps' integer adds into one tree, computes all their `vpmaddubsw` first
# and spills most of them to the stack. The asm emits no instruction; it only pins the order.


def w4_microkernel(s: Schedule, mr: int) -> str:
    """`w4_mk<mr>`: mr rows and `w4.tile_cols` columns, in passes of `w4.pass_cols(mr)` columns per
    group. With `w4.panel`, later passes re-read the group's B rows (spg x 256 B) from L1, so DRAM sees
    one contiguous stream while only one pass's columns of int accumulators occupy registers."""
    o, w4 = ISA_OPS[s.isa], s.w4
    nr = w4.pass_cols(mr)
    vi, vf, p, lanes, nv = o.vi, o.vf, o.prefix, o.lanes, nr // o.lanes
    avx2 = s.isa == "avx2"
    cols = w4.tile_cols
    passes = cols // nr
    out = [(f"static inline __attribute__((always_inline)) void w4_mk{mr}(const int8_t* a, long lda, "
            "const uint8_t* b, const float* sw, const int32_t* gs, long ng, long spg, float* acc) {"),
           f"  const {vi} m4 = {p}_set1_epi8(0x0f);"]
    if avx2:
        out.append(f"  const {vi} ones = _mm256_set1_epi16(1);")
    out += [f"  {vf} f{i}_{q}_{v} = {p}_setzero_ps();" for i in range(mr) for q in range(passes) for v in range(nv)]
    out.append("  for (long g = 0; g < ng; g++) {")
    for q in range(passes):
        out.append("   {")
        out += [f"    {vi} c{i}_{v} = {o.zero};" for i in range(mr) for v in range(nv)]
        if avx2:  # s16 sums of W4_S16_STEPS k-steps, then one vpmaddwd
            out.append(f"    for (long k4 = g * spg; k4 < (g + 1) * spg; k4 += {W4_S16_STEPS}) {{")
            out += [f"    {vi} h{i}_{v} = {o.zero};" for i in range(mr) for v in range(nv)]
            out.append(f"    #pragma GCC unroll {W4_S16_STEPS}")  # a constant trip count: unrolled, no remainder code
            out.append(f"    for (long u = 0; u < {W4_S16_STEPS}; u++) {{")
            out.append("      const long k = k4 + u;")
        else:
            out.append(f"    #pragma GCC unroll {w4.k_unroll}")
            out.append("    for (long k = g * spg; k < (g + 1) * spg; k++) {")
        # every pass prefetches all the micro-tile's columns: the first this group's rows ahead, the later
        # ones (which find their rows in L1) the next group's, so that DRAM requests go out during every pass
        body = ["const uint8_t* bk = b + k * (PANEL * 4);",
                *prefetch_b(w4.prefetch, cols, "bk" if q == 0 else "bk + spg * (PANEL * 4)")]
        for v in range(nv):
            body.append(f"{vi} r{v} = {o.load(f'bk + {(q * nv + v) * lanes * 4}')};")
            body.append(f"{vi} lo{v} = {o.and_}(r{v}, m4), hi{v} = {o.and_}({p}_srli_epi16(r{v}, 4), m4);")
        for i in range(mr):
            body.append(f"int32_t x{i}, y{i}; memcpy(&x{i}, a + {i} * lda + k * 8, 4); "
                        f"memcpy(&y{i}, a + {i} * lda + k * 8 + 4, 4);")
            body.append(f"{vi} al{i} = {p}_set1_epi32(x{i}), ah{i} = {p}_set1_epi32(y{i});")
            if avx2:
                body += [f"h{i}_{v} = _mm256_add_epi16(h{i}_{v}, _mm256_add_epi16(_mm256_maddubs_epi16(lo{v}, al{i}), "
                         f"_mm256_maddubs_epi16(hi{v}, ah{i})));" for v in range(nv)]
            else:
                body += [o.dot(f"c{i}_{v}", f"lo{v}", f"al{i}") + " " + o.dot(f"c{i}_{v}", f"hi{v}", f"ah{i}")
                         for v in range(nv)]
        if avx2:  # the order barrier (see W4_S16_STEPS)
            hs = ", ".join(f'"+x"(h{i}_{v})' for i in range(mr) for v in range(nv))
            body.append(f'__asm__("" : {hs});')
        out += ["      " + x for x in body] + ["    }"]
        if avx2:
            out += [f"    c{i}_{v} = _mm256_add_epi32(c{i}_{v}, _mm256_madd_epi16(h{i}_{v}, ones));"
                    for i in range(mr) for v in range(nv)]
            out.append("    }")
        for i in range(mr):  # int group partial -> fp32, times the group scale; mul then add (no FMA)
            out.append(f"    {vi} z{i} = {p}_set1_epi32(8 * gs[{i} * ng + g]);")
            out += [f"    f{i}_{q}_{v} = {p}_add_ps(f{i}_{q}_{v}, {p}_mul_ps({p}_cvtepi32_ps({p}_sub_epi32(c{i}_{v}, z{i})), "
                    f"{p}_loadu_ps(sw + g * PANEL + {(q * nv + v) * lanes})));" for v in range(nv)]
        out.append("   }")
    out.append("  }")
    out += [f"  {p}_storeu_ps(acc + {i * cols + (q * nv + v) * lanes}, f{i}_{q}_{v});"
            for i in range(mr) for q in range(passes) for v in range(nv)]
    return "\n".join(out + ["}"])
