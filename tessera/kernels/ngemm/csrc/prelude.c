/* What every generated translation unit starts with (a string.Template, filled in by codegen.py). */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <string.h>
#define PANEL ${PANEL}

static inline void store_out(void* out, long idx, float y, int bf16) {
  if (bf16) {  /* round to nearest even, like torch's float -> bfloat16 */
    uint32_t u; memcpy(&u, &y, 4); u += 0x7fffu + ((u >> 16) & 1u);
    ((uint16_t*)out)[idx] = (uint16_t)(u >> 16);
  } else ((float*)out)[idx] = y;
}

static inline float ld_f32(const float* p, long i) { return p[i]; }
static inline float ld_bf16(const uint16_t* p, long i) {  /* bf16 = the high half of an fp32 */
  const uint32_t u = (uint32_t)p[i] << 16; float f; memcpy(&f, &u, 4); return f;
}
