"""ShadowKV Triton kernels (arXiv 2410.21465): landmark scoring (`score`), low-rank key rebuild with RoPE
(`rebuild`) and sparse decode attention (`attn`); each file carries its torch reference.
"""
