"""Mixture-of-Experts kernels: the grouped GEMM that runs every expert's rows in one launch.

Its torch reference is `grouped_gemm_ref` beside it; `tessera.layers.experts` picks the backend.
"""
