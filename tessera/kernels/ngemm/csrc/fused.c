/* One ctypes call per linear: quantize into a scratch buffer, then run the GEMM, which saves a second
   call and torch's allocations (the per-call overhead decides the speed of small linears). A
   string.Template, filled in by codegen.py. */
#include <stdlib.h>
${W8_KERNEL_ENUM}
void tq_w8a8_x(const void* x, int x_bf16, long M, long K, const int8_t* B, const int32_t* colsum,
               const float* sw, const float* bias, void* out, int out_bf16, long N, long Kp, long rows,
               int kernel, int nt) {  /* kernel: an enum tq_w8_kernel; rows: M padded for the AMX blocks */
  uint8_t* q = aligned_alloc(64, (rows * Kp + 63) / 64 * 64);
  float* sa = malloc(M * sizeof(float));
  if (x_bf16) tq_quant_bf16(x, M, K, Kp, 1, q, sa, 0, NULL, nt);
  else tq_quant_f32(x, M, K, Kp, 1, q, sa, 0, NULL, nt);
  memset(q + M * Kp, 128, (rows - M) * Kp);  /* AMX pad rows: u8 128 is int8 0 */
  /* the AMX kernels are named by their block height (> 0), the sign-trick kernels are the negative one */
  if (kernel > TQ_W8_VECTOR) ${AMX_CALL};
  else if (kernel < TQ_W8_VECTOR) ${SIGN_CALL};
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
