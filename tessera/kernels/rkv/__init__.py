"""R-KV scoring kernels (arXiv 2505.24133): the O(n^2) redundancy pass without an n x n matrix in memory.
`reference.py` holds the definition (the full similarity matrix, as the authors' `cal_similarity`), `blocked.py`
the CPU path (row blocks, same outputs) and `redundancy.py` the fused Triton kernel; `redundancy()` picks one.
"""

from tessera.kernels.rkv.blocked import row_stats_blocked
from tessera.kernels.rkv.redundancy import row_stats_triton
from tessera.kernels.rkv.reference import redundancy_from_row_stats, redundancy_ref, row_stats_ref

__all__ = ["redundancy", "redundancy_from_row_stats", "redundancy_ref", "row_stats_blocked", "row_stats_ref",
           "row_stats_triton"]


def redundancy(keys, valid, threshold: float = 0.5, impl: str = "auto"):
    """R-KV's redundancy score of every slot: keys [R, H, N, D], valid [R, N] -> [R, H, N] fp32 (0 at padding).

    impl: "reference" (the full matrix), "blocked" (torch, row blocks), "triton" (the fused kernel) or "auto"
    (triton on CUDA, blocked elsewhere)."""
    if impl == "reference":
        return redundancy_ref(keys, valid, threshold)
    if impl == "auto":
        impl = "triton" if keys.is_cuda else "blocked"
    fns = {"blocked": row_stats_blocked, "triton": row_stats_triton}
    if impl not in fns:
        raise ValueError(f"unknown redundancy impl {impl!r}; known: auto, reference, {', '.join(fns)}")
    return redundancy_from_row_stats(*fns[impl](keys, valid, threshold), valid)
