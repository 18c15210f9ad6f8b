"""NGEMM (Bao et al., arXiv 1910.00178): generated int8 / int4 GEMM kernels for CPUs, Triton W8A8 for GPUs.

CPU: `schedule` says what to generate per ISA, `codegen` writes the C (fixed parts in `csrc/`, the
micro-kernels from `emit_w8` / `emit_w4` with the ISA vocabulary of `isa_ops`, weights in the
`layout` of `gemm`'s packers), `ccache` compiles it once per machine, `library` loads it and picks the
W8A8 kernels of a call (`w8_kernel`), `cpu_isa` picks the ISA, `gemm` packs weights and calls the
kernels, `reference` is the plain-PyTorch reference. GPU: `gemm_triton`.
"""
