"""Generate specialised C micro-kernels for W8A8 and W4A8 GEMM from a small schedule description.

This is NGEMM's "compiler-based" idea (Bao et al., arXiv 1910.00178; ONNX Runtime Nuphar
`intrin_gemm_8bit.cc`) without TVM: Python emits fully unrolled micro-kernels for one schedule
(tile MR x NR, K unroll, prefetch distance, ISA) and gcc compiles them (see `ccache.py`).

Layout, shared by every ISA so that a packed weight never depends on the machine that packed it:
- W8A8: B is `[Np/64][Kp/4][64][4]` int8. Each 32-bit lane holds 4 consecutive k of one column
  (the NGEMM / VNNI layout), so activations are *broadcast* 4 bytes at a time and accumulated
  vertically: lane j of an accumulator is output column j; no horizontal reduction ever happens.
  `vpdpbusd` is unsigned x signed, so activations are shifted to u8 (q + 128) and the kernel
  subtracts 128 * colsum[n] in the epilogue.
- W4A8: B is `[Np/64][K/8][64][4]` bytes; byte j of a lane holds k = 8s+j (low nibble) and
  k = 8s+4+j (high nibble) as u4 = q + 8. Here the *weights* are the unsigned operand and the
  activations stay signed, so the correction is 8 * (sum of the group's activations).
Narrower ISAs (ymm) walk a 64-column panel as 64/NR sub-panels, or whole (AVX2: one row, 8 ymm
accumulators, so that the B stream is contiguous; W4A8 in 32-column passes per group, or 16-column
passes for its 2-row tiles from M = 2).

AVX2 has no `vpdpbusd`; `vpmaddubsw` adds two u8*s8 products into *saturating* s16
(255*-128*2 = -65280). W8A8 splits the u8 activation into bit 7 and bits 0-6: each half's pair
sum fits s16 exactly (|128*-128*2| = 32768 is still representable as -32768, 127*-128*2 = -32512).
For W4A8 the unsigned operand is <= 15, so a single `vpmaddubsw` cannot saturate, and 8 of its
pair sums still fit s16: AVX2 W4A8 widens once per 4 k-steps (`W4_S16_STEPS`).
When the weights avoid -128 (as `quantize_weight_int8`'s do: [-127, 127]) AVX2 W8A8 has a cheaper
exact form, the sign trick of llama.cpp's AVX2 dot products: with a = u8 ^ 0x80 the signed activation,
a * w = |a| * sign(w, a), where `vpsignb` negates w (|w| <= 127: no wrap) and |a| <= 128 is a valid
unsigned operand; a pair sum is at most 128 * 127 * 2 = 32512. That is one `vpmaddubsw` per four
products instead of two (`tq_w8a8_s`, no +128 shift, so no colsum correction); the split stays for
weights holding -128 (`tq_w8a8`).
"""

from __future__ import annotations

from dataclasses import dataclass

PANEL = 64  # output columns per packed panel, for every ISA


@dataclass(frozen=True)
class Schedule:
    isa: str
    mr: int  # W8A8 rows per micro-tile (accumulators: mr * nr / lanes)
    nr: int  # columns per micro-tile; divides PANEL
    k_unroll: int  # k-steps per loop iteration
    prefetch: int  # prefetch distance in k-steps of the B stream (0: none)
    mr_w4: int  # W4A8 rows per micro-tile (needs int and float accumulators)
    amx_min_m: int = 0  # isa "amx": W8A8 with M >= this uses AMX tiles; 0 = never
    amx_prefetch: int = 0  # AMX kernels: prefetch the B block this many 64-k steps ahead (0: none)
    nr_w4: int = 0  # W4A8 columns per register pass (0: nr); W4A8 also keeps fp32 accumulators
    w4_panel: bool = False  # W4A8 micro-tile = the whole panel, walked in nr_w4-column passes per group
    prefetch_w4: int | None = None  # W4A8 prefetch distance in k-steps (None: prefetch)
    nr_w4_rows: int = 0  # W4A8 pass width of micro-tiles of 2+ rows (0: nr_w4); needs w4_panel

    @property
    def nr4(self) -> int:
        return self.nr_w4 or self.nr

    def nr4_for(self, mr: int) -> int:
        """W4A8 columns per register pass of an mr-row micro-kernel."""
        return self.nr_w4_rows if mr > 1 and self.nr_w4_rows else self.nr4

    @property
    def pf4(self) -> int:
        return self.prefetch if self.prefetch_w4 is None else self.prefetch_w4

    @property
    def w4_cols(self) -> int:  # columns of one W4A8 micro-kernel call
        return PANEL if self.w4_panel else self.nr4

    def __post_init__(self):
        lanes = ISA_OPS[self.isa]["lanes"]
        for name, nr in (("nr", self.nr), ("nr_w4", self.nr4), ("nr_w4_rows", self.nr4_for(2))):
            if PANEL % nr or nr % lanes:
                raise ValueError(f"{name}={nr} must divide {PANEL} and be a multiple of {lanes} lanes")
        if self.nr_w4_rows and not self.w4_panel:
            raise ValueError("nr_w4_rows needs w4_panel (every W4A8 micro-kernel then covers the whole panel)")
        if min(self.mr, self.mr_w4, self.k_unroll) < 1 or min(self.prefetch, self.pf4, self.amx_prefetch) < 0:
            raise ValueError(f"bad schedule {self}")


_Z, _Y = "_mm512", "_mm256"
ISA_OPS = {
    "avx512vnni": {
        "lanes": 16, "vi": "__m512i", "vf": "__m512", "p": _Z, "zero": "_mm512_setzero_si512()",
        "load": "_mm512_loadu_si512((const void*)({}))", "and_": "_mm512_and_si512",
        "flags": ("-mavx2", "-mfma", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512vnni"),
        "store": "_mm512_storeu_si512((void*)({}), {})"},
    "avxvnni": {
        "lanes": 8, "vi": "__m256i", "vf": "__m256", "p": _Y, "zero": "_mm256_setzero_si256()",
        "load": "_mm256_loadu_si256((const __m256i*)({}))", "and_": "_mm256_and_si256",
        "flags": ("-mavx2", "-mfma", "-mavxvnni"), "store": "_mm256_storeu_si256((__m256i*)({}), {})"},
    "avx2": {
        "lanes": 8, "vi": "__m256i", "vf": "__m256", "p": _Y, "zero": "_mm256_setzero_si256()",
        "load": "_mm256_loadu_si256((const __m256i*)({}))", "and_": "_mm256_and_si256",
        "flags": ("-mavx2", "-mfma"), "store": "_mm256_storeu_si256((__m256i*)({}), {})"},
}
# AMX = the AVX512-VNNI micro-kernels for small M plus AMX tiles for large M.
ISA_OPS["amx"] = {**ISA_OPS["avx512vnni"], "flags": (*ISA_OPS["avx512vnni"]["flags"], "-mamx-tile", "-mamx-int8")}


# Register budget: zmm has 32 registers (6x4 accumulators + 4 B + 1 A = 29), ymm 16.
DEFAULT_SCHEDULES = {
    # amx_prefetch=1: software prefetch of the next 4 KB B block made M = 16-64 cold 1.3-1.45x faster
    # (2026-11-27, quiet VM; distances 2-8 and the L2 hint T1 were no better; docs/ngemm.md)
    "amx": Schedule("amx", mr=6, nr=64, k_unroll=4, prefetch=16, mr_w4=2, amx_min_m=16, amx_prefetch=1),
    "avx512vnni": Schedule("avx512vnni", mr=6, nr=64, k_unroll=4, prefetch=16, mr_w4=2),
    "avxvnni": Schedule("avxvnni", mr=2, nr=32, k_unroll=4, prefetch=16, mr_w4=1),
    # AVX2: one row against a whole 64-column panel, so the B stream is contiguous (256 B per k-step); a
    # 16-column sub-panel reads 64 of every 256 B and streamed 14 GB/s at M = 1 against 22-25 (2026-11-27,
    # Zen 1 EPYC; docs/ngemm.md). W4A8 keeps int, s16 and fp32 accumulators: 32 columns of them fit the 16
    # registers, so it walks the panel in two 32-column passes per group (w4_panel; 1.2x at M = 1 cold).
    # W4A8 computes twice as long per byte as W8A8: it wants its prefetches further ahead (8: 1.04-1.05x at
    # M = 1), W8A8 not (8 cost it 10-15 %). From M = 2, W4A8 runs two rows per micro-tile in 16-column passes,
    # so that both rows use each unpacked B vector and row 0's DRAM stream overlaps row 1's compute
    # (cold 4096x4096: 1.08-1.17x at M = 2-16; 4 rows x 8 columns did as well at M = 4-16; docs/ngemm.md).
    "avx2": Schedule("avx2", mr=1, nr=64, k_unroll=1, prefetch=4, mr_w4=2, nr_w4=32, w4_panel=True, prefetch_w4=8,
                     nr_w4_rows=16),
}


def _dot(isa: str, c: str, u: str, s: str) -> str:
    """c += dot4(u: unsigned bytes, s: signed bytes) per 32-bit lane; exact when u <= 127 on AVX2."""
    if isa in ("avx512vnni", "amx"):
        return f"{c} = _mm512_dpbusd_epi32({c}, {u}, {s});"
    if isa == "avxvnni":
        return f"{c} = _mm256_dpbusd_avx_epi32({c}, {u}, {s});"
    return f"{c} = _mm256_add_epi32({c}, _mm256_madd_epi16(_mm256_maddubs_epi16({u}, {s}), ones));"


def _prefetch(dist: int, nr: int, ptr: str) -> list[str]:
    """Prefetch the B lines of one k-step of an nr-column sub-panel, dist k-steps past ptr (0: none)."""
    if not dist:
        return []
    lines = max(1, nr * 4 // 64)  # cache lines of B consumed per k-step by an nr-column sub-panel
    return [f"_mm_prefetch((const char*)({ptr} + {dist * PANEL * 4 + 64 * i}), _MM_HINT_T0);"
            for i in range(lines)]


def _w8_microkernel(s: Schedule, mr: int, sign: bool = False) -> str:
    """sign: the AVX2 sign-trick kernel `w8s_mk` (weights without -128; see the module docstring)."""
    o = ISA_OPS[s.isa]
    vi, lanes, nv = o["vi"], o["lanes"], s.nr // o["lanes"]
    avx2 = s.isa == "avx2"
    out = [(f"static inline __attribute__((always_inline)) void w8{'s' if sign else ''}_mk{mr}("
            "const uint8_t* a, long lda, const int8_t* b, long nk, int32_t* acc) {")]
    out += [f"  {vi} c{i}_{v} = {o['zero']};" for i in range(mr) for v in range(nv)]
    if avx2:
        out.append(f"  const {vi} ones = _mm256_set1_epi16(1), lo7 = _mm256_set1_epi8(0x7f), "
                   "hi1 = _mm256_set1_epi8((char)0x80);")

    def step(u: int) -> list[str]:
        body = [f"const int8_t* bk = b + (k + {u}) * (PANEL * 4);", *_prefetch(s.prefetch, s.nr, "bk")]
        body += [f"{vi} b{v} = {o['load'].format(f'bk + {v * lanes * 4}')};" for v in range(nv)]
        for i in range(mr):
            body.append(f"int32_t x{i}; memcpy(&x{i}, a + {i} * lda + (k + {u}) * 4, 4);")
            body.append(f"{vi} a{i} = {o['p']}_set1_epi32(x{i});")
            if sign:  # a * w = |a| * sign(w, a), exact for |w| <= 127
                body.append(f"{vi} s{i} = _mm256_xor_si256(a{i}, hi1), m{i} = _mm256_abs_epi8(s{i});")
                body += [_dot(s.isa, f"c{i}_{v}", f"m{i}", f"_mm256_sign_epi8(b{v}, s{i})") for v in range(nv)]
            elif avx2:  # split u8 into bit 7 and bits 0-6 so vpmaddubsw cannot saturate
                body.append(f"{vi} l{i} = _mm256_and_si256(a{i}, lo7), h{i} = _mm256_and_si256(a{i}, hi1);")
                body += [_dot(s.isa, f"c{i}_{v}", f"l{i}", f"b{v}") + " " + _dot(s.isa, f"c{i}_{v}", f"h{i}", f"b{v}")
                         for v in range(nv)]
            else:
                body += [_dot(s.isa, f"c{i}_{v}", f"a{i}", f"b{v}") for v in range(nv)]
        return ["    {"] + ["      " + x for x in body] + ["    }"]

    out.append(f"  long k = 0;\n  for (; k + {s.k_unroll} <= nk; k += {s.k_unroll}) {{")
    for u in range(s.k_unroll):
        out += step(u)
    out.append("  }\n  for (; k < nk; k++) {")
    out += step(0)
    out.append("  }")
    out += ["  " + o["store"].format(f"acc + {i * s.nr + v * lanes}", f"c{i}_{v}") + ";"
            for i in range(mr) for v in range(nv)]
    return "\n".join(out + ["}"])


# AVX2 W4A8: a vpmaddubsw pair sum is at most 2 * 15 * 128 = 3840 (u4 weight x s8 activation), so 8 of
# them, the lo and hi nibble products of 4 k-steps, add up in s16 (<= 30720 < 32767) before one
# vpmaddwd widens them: 2.25 multiply uops per 64 products instead of 4 (the multiplier is the bound of
# AVX2 int8 on Zen 1). Every supported group (32 ... 256) is a whole number of 4-step blocks.
W4_S16_STEPS = 4
# _W4_BARRIER: an empty asm that "rewrites" the s16 sums after every k-step. Without it gcc 12 reassociated
# the 4 unrolled steps' integer adds into one tree, computed all 32 `vpmaddubsw` first and spilled 24 of
# them to the stack (hot W4A8 at M = 1: ~49 instead of ~44 cycles per k-step; 1.03-1.13x cold on the 8B
# shapes at M = 1-16 in a same-run A/B; docs/ngemm.md). The asm emits nothing; it only pins the order.


def _w4_microkernel(s: Schedule, mr: int) -> str:
    """W4A8 micro-kernel over mr rows and `s.w4_cols` columns, in passes of `s.nr4_for(mr)` columns per
    group: with `w4_panel`, later passes re-read the group's B rows (spg x 256 B) from L1, so DRAM sees
    one contiguous stream while only that many columns of int accumulators occupy registers."""
    o = ISA_OPS[s.isa]
    nr4 = s.nr4_for(mr)
    vi, vf, p, lanes, nv = o["vi"], o["vf"], o["p"], o["lanes"], nr4 // o["lanes"]
    ps = "512" if p == _Z else "256"
    avx2 = s.isa == "avx2"
    passes = s.w4_cols // nr4
    out = [(f"static inline __attribute__((always_inline)) void w4_mk{mr}(const int8_t* a, long lda, "
            "const uint8_t* b, const float* sw, const int32_t* gs, long ng, long spg, float* acc) {"),
           f"  const {vi} m4 = {p}_set1_epi8(0x0f);"]
    if avx2:
        out.append(f"  const {vi} ones = _mm256_set1_epi16(1);")
    out += [f"  {vf} f{i}_{q}_{v} = {p}_setzero_ps();" for i in range(mr) for q in range(passes) for v in range(nv)]
    out.append("  for (long g = 0; g < ng; g++) {")
    for q in range(passes):
        out.append("   {")
        out += [f"    {vi} c{i}_{v} = {o['zero']};" for i in range(mr) for v in range(nv)]
        if avx2:  # s16 sums of 4 k-steps, then one vpmaddwd (see W4_S16_STEPS)
            out.append(f"    for (long k4 = g * spg; k4 < (g + 1) * spg; k4 += {W4_S16_STEPS}) {{")
            out += [f"    {vi} h{i}_{v} = {o['zero']};" for i in range(mr) for v in range(nv)]
            out.append(f"    #pragma GCC unroll {W4_S16_STEPS}")  # a constant trip count: unrolled, no remainder code
            out.append(f"    for (long u = 0; u < {W4_S16_STEPS}; u++) {{")
            out.append("      const long k = k4 + u;")
        else:
            out.append(f"    #pragma GCC unroll {s.k_unroll}")
            out.append("    for (long k = g * spg; k < (g + 1) * spg; k++) {")
        # every pass prefetches all the micro-tile's columns: the first this group's rows ahead, the later
        # ones (which find their rows in L1) the next group's, so that DRAM requests go out during every pass
        # (the first pass alone: 1.06-1.14x slower at M = 1, docs/ngemm.md)
        body = ["const uint8_t* bk = b + k * (PANEL * 4);",
                *_prefetch(s.pf4, s.w4_cols, "bk" if q == 0 else "bk + spg * (PANEL * 4)")]
        for v in range(nv):
            body.append(f"{vi} r{v} = {o['load'].format(f'bk + {(q * nv + v) * lanes * 4}')};")
            body.append(f"{vi} lo{v} = {o['and_']}(r{v}, m4), hi{v} = {o['and_']}({p}_srli_epi16(r{v}, 4), m4);")
        for i in range(mr):
            body.append(f"int32_t x{i}, y{i}; memcpy(&x{i}, a + {i} * lda + k * 8, 4); "
                        f"memcpy(&y{i}, a + {i} * lda + k * 8 + 4, 4);")
            body.append(f"{vi} al{i} = {p}_set1_epi32(x{i}), ah{i} = {p}_set1_epi32(y{i});")
            if avx2:
                body += [f"h{i}_{v} = _mm256_add_epi16(h{i}_{v}, _mm256_add_epi16(_mm256_maddubs_epi16(lo{v}, al{i}), "
                         f"_mm256_maddubs_epi16(hi{v}, ah{i})));" for v in range(nv)]
            else:
                body += [_dot(s.isa, f"c{i}_{v}", f"lo{v}", f"al{i}") + " " + _dot(s.isa, f"c{i}_{v}", f"hi{v}", f"ah{i}")
                         for v in range(nv)]
        if avx2:  # see _W4_BARRIER
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
    out += [f"  _mm{ps}_storeu_ps(acc + {i * s.w4_cols + (q * nv + v) * lanes}, f{i}_{q}_{v});"
            for i in range(mr) for q in range(passes) for v in range(nv)]
    return "\n".join(out + ["}"])


def _switch(name: str, mr_max: int, args: str) -> str:
    cases = " ".join(f"case {m}: {name}{m}({args}); break;" for m in range(1, mr_max + 1))
    return f"switch (mr) {{ {cases} }}"


_PRELUDE = r"""
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <string.h>
#define PANEL 64

static inline void store_out(void* out, long idx, float y, int bf16) {
  if (bf16) {  /* round to nearest even, like torch's float -> bfloat16 */
    uint32_t u; memcpy(&u, &y, 4); u += 0x7fffu + ((u >> 16) & 1u);
    ((uint16_t*)out)[idx] = (uint16_t)(u >> 16);
  } else ((float*)out)[idx] = y;
}
"""

_LOADERS = r"""
static inline float ld_f32(const float* p, long i) { return p[i]; }
static inline float ld_bf16(const uint16_t* p, long i) {  /* bf16 = the high half of an fp32 */
  const uint32_t u = (uint32_t)p[i] << 16; float f; memcpy(&f, &u, 4); return f;
}
"""
# Per-token symmetric quantization, q = clamp(round_half_even(x * (127 / amax)), -127, 127).
_QUANT = r"""
static inline float row_amax_{T}(const {CT}* xr, long K) {
  /* 16 running maxima: element-wise, so gcc vectorizes it (one scalar chain is 4 cycles per element) */
  float m16[16] = {0}, amax = 0.f;
  long k = 0;
  for (; k + 16 <= K; k += 16)
    for (int j = 0; j < 16; j++) { const float v = fabsf(ld_{T}(xr, k + j)); m16[j] = v > m16[j] ? v : m16[j]; }
  for (; k < K; k++) { const float v = fabsf(ld_{T}(xr, k)); amax = v > amax ? v : amax; }
  for (int j = 0; j < 16; j++) amax = m16[j] > amax ? m16[j] : amax;
  return amax;
}
void tq_quant_{T}(const {CT}* x, long M, long K, long Kp, int shift, uint8_t* q, float* scale,
                  long group, int32_t* gsum, int nt) {
  #pragma omp parallel for num_threads(nt) schedule(static) if (M > 8)
  for (long m = 0; m < M; m++) {
    const {CT}* xr = x + m * K;
    uint8_t* qr = q + m * Kp;
    const float amax = row_amax_{T}(xr, K);
    const float inv = amax > 0.f ? 127.0f / amax : 0.f;
    scale[m] = amax / 127.0f;
    for (long k = 0; k < K; k++) {
      float r = rintf(ld_{T}(xr, k) * inv);  /* half to even, as torch.round */
      r = r < -127.f ? -127.f : (r > 127.f ? 127.f : r);
      qr[k] = (uint8_t)((int)r + (shift ? 128 : 0));
    }
    for (long k = K; k < Kp; k++) qr[k] = shift ? 128 : 0;
    if (group > 0)
      for (long g = 0; g < K / group; g++) {
        int32_t s = 0;
        for (long k = g * group; k < (g + 1) * group; k++) s += (int8_t)qr[k];
        gsum[m * (K / group) + g] = s;
      }
  }
}
"""


# AMX (Sapphire Rapids+): `tdpbusd` multiplies a 16x64 u8 tile of A by a 16x(16x4) s8 tile of B in
# exactly our VNNI layout, so B tiles load straight from the packed panels with a 256-byte stride.
# Needs Kp % 64 == 0 and A padded to whole 16- or 32-row blocks (the host does both).
_AMX = r"""
#include <sys/syscall.h>
#include <unistd.h>
int tq_amx_init(void) { return (int)syscall(SYS_arch_prctl, 0x1023 /* REQ_XCOMP_PERM */, 18 /* XTILEDATA */); }
typedef struct { uint8_t palette, start; uint8_t res[14]; uint16_t colsb[16]; uint8_t rows[16]; } tq_tilecfg;

static void tq_tiles_on(void) {  /* 8 tiles of 16 rows x 64 bytes; the config is per thread */
  tq_tilecfg cfg; memset(&cfg, 0, sizeof cfg); cfg.palette = 1;
  for (int i = 0; i < 8; i++) { cfg.colsb[i] = 64; cfg.rows[i] = 16; }
  _tile_loadconfig(&cfg);
}

static inline void w8_store(const int32_t* acc, long ld, long mr, long nn, long m0, long n0,
                            const float* sa, const int32_t* colsum, const float* sw, const float* bias,
                            void* out, int out_bf16, int32_t* raw, long N) {
  for (long i = 0; i < mr; i++) for (long j = 0; j < nn; j++) {
    const long n = n0 + j, idx = (m0 + i) * N + n;
    const int32_t v = acc[i * ld + j] - 128 * colsum[n];
    if (raw) { raw[idx] = v; continue; }
    float y = (float)v * (sa[m0 + i] * sw[n]);
    if (bias) y = y + bias[n];
    store_out(out, idx, y, out_bf16);
  }
}

/* M > 16: 32x32 output blocks, 4 accumulator tiles + 2 A + 2 B; A padded to 32-row blocks. */
void tq_w8a8_amx(const uint8_t* A, const float* sa, const int8_t* B, const int32_t* colsum,
                 const float* sw, const float* bias, void* out, int out_bf16, int32_t* raw,
                 long M, long N, long Kp, int nt) {
  const long mb = (M + 31) / 32, ntiles = (N + PANEL - 1) / PANEL * 2 * mb;
  #pragma omp parallel num_threads(nt)
  {
    tq_tiles_on();
    int32_t acc[32 * 32] __attribute__((aligned(64)));
    #pragma omp for schedule(static)
    for (long t = 0; t < ntiles; t++) {  /* m-blocks innermost: a thread keeps its B half-panel in L2 */
      const long p = t / (2 * mb), h = (t / mb) % 2, m0 = (t % mb) * 32, n0 = p * PANEL + h * 32;
      if (n0 >= N) continue;
      const int8_t* bp = B + p * Kp * PANEL + h * 32 * 4;
      const uint8_t* a0 = A + m0 * Kp;
      _tile_zero(0); _tile_zero(1); _tile_zero(2); _tile_zero(3);
      for (long k = 0; k < Kp; k += 64) {
        const int8_t* bk = bp + (k / 4) * PANEL * 4;
        for (int r = 0; r < 16 * (AMX_PF > 0); r++) {  /* this half-panel's 2 KB of the block AMX_PF steps ahead */
          _mm_prefetch((const char*)(bk + AMX_PF * PANEL * 64 + r * PANEL * 4), _MM_HINT_T0);
          _mm_prefetch((const char*)(bk + AMX_PF * PANEL * 64 + r * PANEL * 4 + 64), _MM_HINT_T0);
        }
        _tile_loadd(4, a0 + k, Kp); _tile_loadd(5, a0 + 16 * Kp + k, Kp);
        _tile_loadd(6, bk, PANEL * 4); _tile_loadd(7, bk + 64, PANEL * 4);
        _tile_dpbusd(0, 4, 6); _tile_dpbusd(1, 4, 7); _tile_dpbusd(2, 5, 6); _tile_dpbusd(3, 5, 7);
      }
      _tile_stored(0, acc, 128); _tile_stored(1, acc + 16, 128);
      _tile_stored(2, acc + 512, 128); _tile_stored(3, acc + 528, 128);
      w8_store(acc, 32, M - m0 < 32 ? M - m0 : 32, N - n0 < 32 ? N - n0 : 32, m0, n0,
               sa, colsum, sw, bias, out, out_bf16, raw, N);
    }
    _tile_release();
  }
}

/* M <= 16: one 16-row A tile against a whole 64-column panel (4 accumulators, B tile 5 reused). */
void tq_w8a8_amx16(const uint8_t* A, const float* sa, const int8_t* B, const int32_t* colsum,
                   const float* sw, const float* bias, void* out, int out_bf16, int32_t* raw,
                   long M, long N, long Kp, int nt) {
  const long np = (N + PANEL - 1) / PANEL;
  #pragma omp parallel num_threads(nt) if (M * N * Kp >= (1L << 20))
  {
    tq_tiles_on();
    int32_t acc[16 * 64] __attribute__((aligned(64)));
    #pragma omp for schedule(static)
    for (long p = 0; p < np; p++) {
      const int8_t* bp = B + p * Kp * PANEL;
      _tile_zero(0); _tile_zero(1); _tile_zero(2); _tile_zero(3);
      for (long k = 0; k < Kp; k += 64) {
        const int8_t* bk = bp + (k / 4) * PANEL * 4;
        for (int l = 0; l < 64 * (AMX_PF > 0); l++)  /* the whole 4 KB B block AMX_PF steps ahead */
          _mm_prefetch((const char*)(bk + AMX_PF * PANEL * 64 + 64 * l), _MM_HINT_T0);
        _tile_loadd(4, A + k, Kp);
        _tile_loadd(5, bk, PANEL * 4); _tile_loadd(6, bk + 64, PANEL * 4); _tile_loadd(7, bk + 128, PANEL * 4);
        _tile_dpbusd(0, 4, 5); _tile_dpbusd(1, 4, 6); _tile_dpbusd(2, 4, 7);
        _tile_loadd(5, bk + 192, PANEL * 4); _tile_dpbusd(3, 4, 5);
      }
      _tile_stored(0, acc, 256); _tile_stored(1, acc + 16, 256);
      _tile_stored(2, acc + 32, 256); _tile_stored(3, acc + 48, 256);
      w8_store(acc, 64, M, N - p * PANEL < 64 ? N - p * PANEL : 64, 0, p * PANEL,
               sa, colsum, sw, bias, out, out_bf16, raw, N);
    }
    _tile_release();
  }
}
"""


def _driver(s: Schedule, kind: str) -> str:
    """The panel-parallel loop: OpenMP over (panel, sub-panel) tiles, micro-tiles over rows.
    kind: "w8", "w8s" (the AVX2 sign-trick kernels: the product is already a * w, no colsum term) or "w4"."""
    w8, sign = kind in ("w8", "w8s"), kind == "w8s"
    mr_max = s.mr if w8 else s.mr_w4
    if w8:
        head = (f"void tq_w8a8{'_s' if sign else ''}(const uint8_t* A, const float* sa, const int8_t* B, "
                "const int32_t* colsum, const float* sw, const float* bias, void* out, int out_bf16, int32_t* raw, "
                "long M, long N, long Kp, int nt) {\n  const long nk = Kp / 4, kstride = Kp * PANEL;")
        setup = "const int8_t* bp = B + p * kstride + sub * NR * 4;"
        call = _switch(f"{kind}_mk", mr_max, "A + m0 * Kp, Kp, bp, nk, acc")
        epi = (f"const int32_t v = acc[i * NR + j]{'' if sign else ' - 128 * colsum[n]'};\n"
               "        if (raw) { raw[idx] = v; continue; }\n"
               "        float y = (float)v * (sa[m0 + i] * sw[n]);")
    else:
        head = ("void tq_w4a8(const int8_t* A, const float* sa, const int32_t* gsum, const uint8_t* B, "
                "const float* sw, const float* bias, void* out, int out_bf16, "
                "long M, long N, long K, long group, int nt) {\n"
                "  const long ng = K / group, spg = group / 8, kstride = (K / 8) * PANEL * 4;")
        setup = "const uint8_t* bp = B + p * kstride + sub * NR * 4; const float* swp = sw + p * ng * PANEL + sub * NR;"
        call = _switch("w4_mk", mr_max, "A + m0 * K, K, bp, swp, gsum + m0 * ng, ng, spg, acc")
        epi = "float y = acc[i * NR + j] * sa[m0 + i];"
    acc_t = "int32_t" if w8 else "float"
    kdim = "Kp" if w8 else "K"
    nr = s.nr if w8 else s.w4_cols  # NR below: this kind's micro-tile width
    return f"""
{head}
  const long nsub = PANEL / NR, ntiles = (N + PANEL - 1) / PANEL * nsub;
  /* below ~1M MACs an OpenMP fork/join (several us) costs more than the work it splits */
  #pragma omp parallel for num_threads(nt) schedule(static) if (M * N * {kdim} >= (1L << 20))
  for (long t = 0; t < ntiles; t++) {{
    const long p = t / nsub, sub = t % nsub, n0 = p * PANEL + sub * NR;
    if (n0 >= N) continue;
    {setup}
    const long nn = N - n0 < NR ? N - n0 : NR;
    {acc_t} acc[{mr_max} * NR] __attribute__((aligned(64)));
    for (long m0 = 0; m0 < M; m0 += {mr_max}) {{
      const long mr = M - m0 < {mr_max} ? M - m0 : {mr_max};
      {call}
      for (long i = 0; i < mr; i++) for (long j = 0; j < nn; j++) {{
        const long n = n0 + j, idx = (m0 + i) * N + n;
        {epi}
        if (bias) y = y + bias[n];
        store_out(out, idx, y, out_bf16);
      }}
    }}
  }}
}}
""".replace("NR", str(nr))


# One ctypes call per linear: quantize into a scratch buffer, then run the GEMM (saves ~5 us per
# call against separate calls and torch allocations, which matters for the small embedded model).
_FUSED = r"""
#include <stdlib.h>
void tq_w8a8_x(const void* x, int x_bf16, long M, long K, const int8_t* B, const int32_t* colsum,
               const float* sw, const float* bias, void* out, int out_bf16, long N, long Kp, long rows,
               int amx, int nt) {  /* amx: 16 / 32-row AMX blocks, 0 the vector kernels, -1 the sign kernels */
  uint8_t* q = aligned_alloc(64, (rows * Kp + 63) / 64 * 64);
  float* sa = malloc(M * sizeof(float));
  if (x_bf16) tq_quant_bf16(x, M, K, Kp, 1, q, sa, 0, NULL, nt);
  else tq_quant_f32(x, M, K, Kp, 1, q, sa, 0, NULL, nt);
  memset(q + M * Kp, 128, (rows - M) * Kp);  /* AMX pad rows: u8 128 is int8 0 */
  if (amx > 0) AMX_CALL;
  else if (amx < 0) SIGN_CALL;
  else tq_w8a8(q, sa, B, colsum, sw, bias, out, out_bf16, NULL, M, N, Kp, nt);
  free(q); free(sa);
}
void tq_w4a8_x(const void* x, int x_bf16, long M, long K, const uint8_t* B, const float* sw,
               const float* bias, void* out, int out_bf16, long N, long group, int nt) {
  int8_t* q = aligned_alloc(64, (M * K + 63) / 64 * 64);
  float* sa = malloc(M * sizeof(float));
  int32_t* gs = malloc(M * (K / group) * sizeof(int32_t));
  if (x_bf16) tq_quant_bf16(x, M, K, K, 0, (uint8_t*)q, sa, group, gs, nt);
  else tq_quant_f32(x, M, K, K, 0, (uint8_t*)q, sa, group, gs, nt);
  tq_w4a8(q, sa, gs, B, sw, bias, out, out_bf16, M, N, K, group, nt);
  free(q); free(sa); free(gs);
}
"""


def generate(s: Schedule) -> str:
    """Complete C translation unit: quantizers, W8A8 and W4A8 micro-kernels and drivers."""
    parts = [_PRELUDE, _LOADERS]
    parts.append(_QUANT.replace("{T}", "f32").replace("{CT}", "float"))
    parts.append(_QUANT.replace("{T}", "bf16").replace("{CT}", "uint16_t"))
    parts += [_w8_microkernel(s, m) for m in range(1, s.mr + 1)]
    parts += [_w4_microkernel(s, m) for m in range(1, s.mr_w4 + 1)]
    parts += [_driver(s, "w8"), _driver(s, "w4")]
    if s.isa == "avx2":
        parts += [_w8_microkernel(s, m, sign=True) for m in range(1, s.mr + 1)]
        parts.append(_driver(s, "w8s"))
    if s.isa == "amx":
        parts += [f"#define AMX_PF {s.amx_prefetch}", _AMX]
    amx_call = ("(amx == 16 ? tq_w8a8_amx16 : tq_w8a8_amx)(q, sa, B, colsum, sw, bias, out, out_bf16, NULL, "
                "M, N, Kp, nt)") if s.isa == "amx" else "(void)0"
    sign_call = ("tq_w8a8_s(q, sa, B, colsum, sw, bias, out, out_bf16, NULL, M, N, Kp, nt)"
                 if s.isa == "avx2" else "(void)0")
    parts.append(_FUSED.replace("AMX_CALL", amx_call).replace("SIGN_CALL", sign_call))
    return "\n".join(parts)


def flags(s: Schedule) -> tuple[str, ...]:
    return ISA_OPS[s.isa]["flags"]
