/* The panel-parallel driver of one kernel family (a string.Template, filled in by codegen.py): OpenMP
   over (panel, sub-panel) tiles of NR = ${NR} columns, micro-kernels of up to ${MR} rows down the rows,
   then the epilogue: scales, bias, fp32 or bf16 out. */
${SIGNATURE}
  ${SIZES}
  const long nsub = PANEL / ${NR}, ntiles = (N + PANEL - 1) / PANEL * nsub;
  /* below ~1M MACs an OpenMP fork/join (several us) costs more than the work it splits */
  #pragma omp parallel for num_threads(nt) schedule(static) if (M * N * ${KDIM} >= (1L << 20))
  for (long t = 0; t < ntiles; t++) {
    const long p = t / nsub, sub = t % nsub, n0 = p * PANEL + sub * ${NR};
    if (n0 >= N) continue;
    ${PANEL_PTRS}
    const long nn = N - n0 < ${NR} ? N - n0 : ${NR};
    ${ACC_T} acc[${MR} * ${NR}] __attribute__((aligned(64)));
    for (long m0 = 0; m0 < M; m0 += ${MR}) {
      const long mr = M - m0 < ${MR} ? M - m0 : ${MR};
      ${CALL}
      for (long i = 0; i < mr; i++) for (long j = 0; j < nn; j++) {
        const long n = n0 + j, idx = (m0 + i) * N + n;
        ${EPILOGUE}
        if (bias) y = y + bias[n];
        store_out(out, idx, y, out_bf16);
      }
    }
  }
}
