"""Kernels, one sub-package per system; each kernel has a plain-PyTorch reference beside it.

- `ngemm/`: int8 / int4 GEMM (NGEMM, arXiv 1910.00178): generated C kernels for CPUs, Triton W8A8 for GPUs.
- `comm/`: TileLink-style communication kernels (AllGather-GEMM, GEMM-ReduceScatter, AllReduce) over the
  symmetric heap, with their decomposed baselines (arXiv 2503.20313).
- `shadowkv/`: ShadowKV's landmark scoring, key rebuild and sparse decode attention (arXiv 2410.21465).
"""
