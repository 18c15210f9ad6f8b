"""W8A8 micro-kernels: mr rows x nr columns of int32 accumulators over the whole K, fully unrolled.

`vpdpbusd` is unsigned x signed, so activations arrive shifted to u8 (q + 128) and the driver
subtracts 128 * colsum[n] in the epilogue.

AVX2 has no `vpdpbusd`; `vpmaddubsw` adds two u8*s8 products into *saturating* s16
(255*-128*2 = -65280). The split kernels (`w8_mk*`) cut the u8 activation into bit 7 and bits 0-6:
each half's pair sum fits s16 exactly (|128*-128*2| = 32768 is still representable as -32768,
127*-128*2 = -32512). When the weights avoid -128 (as `quantize_weight_int8`'s do: [-127, 127]) there
is a cheaper exact form, the sign trick of llama.cpp's AVX2 dot products (`mul_sum_i8_pairs` in ggml,
github.com/ggerganov/llama.cpp): with a = u8 ^ 0x80 the signed activation, a * w = |a| * sign(w, a),
where `vpsignb` negates w (|w| <= 127: no wrap) and |a| <= 128 is a valid unsigned operand; a pair
sum is at most 128 * 127 * 2 = 32512. That is one `vpmaddubsw` per four products instead of two
(`w8s_mk*`, no +128 shift, so no colsum correction).
"""

from __future__ import annotations

from tessera.kernels.ngemm.isa_ops import ISA_OPS, prefetch_b
from tessera.kernels.ngemm.schedule import Schedule


def w8_microkernel(s: Schedule, mr: int, sign: bool = False) -> str:
    """`w8_mk<mr>`, or with sign the AVX2 sign-trick kernel `w8s_mk<mr>`: acc[mr][nr] = A . B over nk
    k-steps."""
    o, w8 = ISA_OPS[s.isa], s.w8
    vi, lanes, nv = o.vi, o.lanes, w8.nr // o.lanes
    avx2 = s.isa == "avx2"
    out = [(f"static inline __attribute__((always_inline)) void w8{'s' if sign else ''}_mk{mr}("
            "const uint8_t* a, long lda, const int8_t* b, long nk, int32_t* acc) {")]
    out += [f"  {vi} c{i}_{v} = {o.zero};" for i in range(mr) for v in range(nv)]
    if avx2:
        out.append(f"  const {vi} ones = _mm256_set1_epi16(1), lo7 = _mm256_set1_epi8(0x7f), "
                   "hi1 = _mm256_set1_epi8((char)0x80);")

    def step(u: int) -> list[str]:
        body = [f"const int8_t* bk = b + (k + {u}) * (PANEL * 4);", *prefetch_b(w8.prefetch, w8.nr, "bk")]
        body += [f"{vi} b{v} = {o.load(f'bk + {v * lanes * 4}')};" for v in range(nv)]
        for i in range(mr):
            body.append(f"int32_t x{i}; memcpy(&x{i}, a + {i} * lda + (k + {u}) * 4, 4);")
            body.append(f"{vi} a{i} = {o.prefix}_set1_epi32(x{i});")
            if sign:  # a * w = |a| * sign(w, a), exact for |w| <= 127
                body.append(f"{vi} s{i} = _mm256_xor_si256(a{i}, hi1), m{i} = _mm256_abs_epi8(s{i});")
                body += [o.dot(f"c{i}_{v}", f"m{i}", f"_mm256_sign_epi8(b{v}, s{i})") for v in range(nv)]
            elif avx2:  # split u8 into bit 7 and bits 0-6 so vpmaddubsw cannot saturate
                body.append(f"{vi} l{i} = _mm256_and_si256(a{i}, lo7), h{i} = _mm256_and_si256(a{i}, hi1);")
                body += [o.dot(f"c{i}_{v}", f"l{i}", f"b{v}") + " " + o.dot(f"c{i}_{v}", f"h{i}", f"b{v}")
                         for v in range(nv)]
            else:
                body += [o.dot(f"c{i}_{v}", f"a{i}", f"b{v}") for v in range(nv)]
        return ["    {"] + ["      " + x for x in body] + ["    }"]

    out.append(f"  long k = 0;\n  for (; k + {w8.k_unroll} <= nk; k += {w8.k_unroll}) {{")
    for u in range(w8.k_unroll):
        out += step(u)
    out.append("  }\n  for (; k < nk; k++) {")
    out += step(0)
    out.append("  }")
    out += ["  " + o.store(f"acc + {i * w8.nr + v * lanes}", f"c{i}_{v}") + ";" for i in range(mr) for v in range(nv)]
    return "\n".join(out + ["}"])
