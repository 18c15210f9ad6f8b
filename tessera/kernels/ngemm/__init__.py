"""NGEMM (Bao et al., arXiv 1910.00178): generated int8 / int4 GEMM kernels for CPUs, Triton W8A8 for GPUs.

`codegen` writes the C, `ccache` compiles it once per machine, `cpu_isa` picks the ISA, `gemm` packs
weights and calls the kernels, `reference` is the plain-PyTorch reference, `gemm_triton` the GPU path.
"""
