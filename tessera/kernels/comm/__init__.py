"""Tile-centric communication kernels (TileLink, arXiv 2503.20313; Triton-distributed, arXiv 2504.19442).

Fused AllGather-GEMM (`ag_gemm`), GEMM-ReduceScatter (`gemm_rs`) and AllReduce (`allreduce`) over the
symmetric heap, the tile helpers they share (`tile`), decomposed baselines (`decomposed`) and
single-process torch references (`reference`).
"""
