/* AMX W8A8 kernels (Sapphire Rapids+; a string.Template, generated for isa "amx" only). `tdpbusd`
   multiplies a 16x64 u8 tile of A by a 16x(16x4) s8 tile of B in exactly the VNNI layout, so B tiles
   load straight from the packed panels with a 256-byte stride. Needs Kp % 64 == 0 and A padded to
   whole 16- or 32-row blocks (the host does both). AMX_PF: the schedule's B prefetch distance. */
#define AMX_PF ${AMX_PF}
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
