"""ShadowKV knobs (Sun et al., "ShadowKV", arXiv 2410.21465; code: github.com/ByteDance-Seed/ShadowKV).

Defaults follow the authors' reference class (`models/kv_cache.py: ShadowKVCache`): rank 160, chunks of
8 tokens, a sparse budget of 2048 tokens per KV head, a local window of 4 chunks, 48 outlier chunks.
Unlike upstream, any head dim, MHA and any budget that is a multiple of the chunk size are allowed.

`landmark="bounds"` is ours, not the paper's: each chunk keeps the element-wise min and max of its keys
(Quest's page summary, arXiv 2406.10774) instead of their mean, and is scored by the upper bound of q . k
over the chunk. It costs twice the landmark bytes; it exists because a mean landmark dilutes a chunk whose
match is a single token (a needle's key among 7 others), see docs/shadowkv.md.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_RANK = 160
LANDMARKS = ("mean", "bounds")


@dataclass(frozen=True)
class ShadowKVOptions:
    rank: int | None = None  # None: min(160, key width); an explicit rank above the key width is an error
    sparse_budget: int = 2048  # tokens per KV head rebuilt/fetched each step (outliers and local come on top)
    chunk_size: int = 8
    local_chunks: int = 4  # dense window at the end of the prompt
    outlier_chunks: int = 48  # static dense chunks chosen by lowest intra-chunk cosine similarity
    landmark: str = "mean"  # chunk summary for selection: "mean" (the paper) or "bounds" (min/max, Quest's)

    def __post_init__(self):
        for name in ("sparse_budget", "chunk_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"shadowkv: {name} must be >= 1, got {getattr(self, name)}")
        if self.rank is not None and self.rank < 1:
            raise ValueError(f"shadowkv: rank must be >= 1, got {self.rank}")
        if self.local_chunks < 0 or self.outlier_chunks < 0:
            raise ValueError("shadowkv: local_chunks and outlier_chunks must be >= 0")
        if self.landmark not in LANDMARKS:
            raise ValueError(f"shadowkv: landmark must be one of {LANDMARKS}, got {self.landmark!r}")
        if self.sparse_budget % self.chunk_size:
            raise ValueError(
                f"shadowkv: sparse_budget={self.sparse_budget} must be a multiple of chunk_size={self.chunk_size} "
                "(whole chunks are selected)")

    @property
    def select_chunks(self) -> int:
        return self.sparse_budget // self.chunk_size

    def resolve_rank(self, key_width: int) -> int:
        """Rank for a model whose joint key width is Hkv*D (it is further capped by each prompt's length)."""
        if self.rank is None:
            return min(DEFAULT_RANK, key_width)
        if self.rank > key_width:
            raise ValueError(f"shadowkv: rank={self.rank} exceeds the key width Hkv*D={key_width}")
        return self.rank
