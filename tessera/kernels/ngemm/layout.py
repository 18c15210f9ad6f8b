"""The packed weight layouts, shared by every ISA so that a packed weight never depends on the machine
that packed it (`gemm.pack_int8` / `gemm.pack_int4` write them, the generated kernels read them).

- W8A8: B is `[Np/64][Kp/4][64][4]` int8. Each 32-bit lane holds 4 consecutive k of one column (the
  NGEMM / VNNI layout, Bao et al., arXiv 1910.00178), so activations are *broadcast* 4 bytes at a time
  and accumulated vertically: lane j of an accumulator is output column j; no horizontal reduction ever
  happens. The same panels are AMX B tiles with a 256-byte row stride.
- W4A8: B is `[Np/64][K/8][64][4]` bytes; byte j of a lane holds k = 8s+j (low nibble) and k = 8s+4+j
  (high nibble) as u4 = q + 8.
"""

PANEL = 64  # output columns per packed panel
