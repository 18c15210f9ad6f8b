/* Per-token symmetric quantization, q = clamp(round_half_even(x * (127 / amax)), -127, 127), of
   ${CT} input. shift: store q + 128 (the W8A8 kernels' unsigned operand); group > 0: also the sum of
   every group of q (the W4A8 kernels' correction term). A string.Template, once per input type. */
static inline float row_amax_${T}(const ${CT}* xr, long K) {
  /* 16 running maxima: element-wise, so gcc vectorizes it (one scalar chain is 4 cycles per element) */
  float m16[16] = {0}, amax = 0.f;
  long k = 0;
  for (; k + 16 <= K; k += 16)
    for (int j = 0; j < 16; j++) { const float v = fabsf(ld_${T}(xr, k + j)); m16[j] = v > m16[j] ? v : m16[j]; }
  for (; k < K; k++) { const float v = fabsf(ld_${T}(xr, k)); amax = v > amax ? v : amax; }
  for (int j = 0; j < 16; j++) amax = m16[j] > amax ? m16[j] : amax;
  return amax;
}
void tq_quant_${T}(const ${CT}* x, long M, long K, long Kp, int shift, uint8_t* q, float* scale,
                  long group, int32_t* gsum, int nt) {
  #pragma omp parallel for num_threads(nt) schedule(static) if (M > 8)
  for (long m = 0; m < M; m++) {
    const ${CT}* xr = x + m * K;
    uint8_t* qr = q + m * Kp;
    const float amax = row_amax_${T}(xr, K);
    const float inv = amax > 0.f ? 127.0f / amax : 0.f;
    scale[m] = amax / 127.0f;
    for (long k = 0; k < K; k++) {
      float r = rintf(ld_${T}(xr, k) * inv);  /* half to even, as torch.round */
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
