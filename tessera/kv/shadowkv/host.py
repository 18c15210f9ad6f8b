"""The host tier that holds the values of the whole context (ShadowKV keeps only K factors on the GPU).

On CUDA the buffer is pinned CPU memory; a fetch gathers the chunks on the CPU and copies them to the
GPU (synchronously for now: the gathered tensor is not pinned; upstream reads pinned memory zero-copy
from a kernel instead, which is future work). On CPU there is no second
memory, so the tier is a separate buffer and a fetch is a real copy; either way every byte that crosses
tiers is counted, which is the quantity the design is about.
"""

from __future__ import annotations

import torch


class HostValues:
    def __init__(self, v: torch.Tensor, chunk_size: int):
        """v [H, T, D] context values (T a multiple of chunk_size) on the fast device; H may be
        batch x KV heads."""
        H, T, D = v.shape
        self.device = v.device
        pin = v.device.type == "cuda"
        self.v = torch.empty(H, T // chunk_size, chunk_size, D, dtype=v.dtype, device="cpu", pin_memory=pin)
        self.v.copy_(v.view(H, T // chunk_size, chunk_size, D))  # [H, n_chunks, C, D]
        self.bytes_fetched = 0

    def fetch(self, heads: torch.Tensor, chunks: torch.Tensor) -> torch.Tensor:
        """Values of chunk `chunks[i]` of head `heads[i]` -> [M, C, D] on the fast device."""
        out = self.v[heads.cpu(), chunks.cpu()]  # [M, C, D] gathered on the host
        self.bytes_fetched += out.numel() * out.element_size()
        if self.device.type == "cpu":
            return out  # the index above already made a copy out of the host buffer
        return out.to(self.device)

    def select(self, heads: torch.Tensor) -> None:
        """Keep the values of flattened heads `heads` (rows that left the batch free their host memory);
        the transfer count keeps what departed rows fetched."""
        kept = self.v[heads.cpu()]
        self.v = kept.pin_memory() if self.v.is_pinned() else kept

    def nbytes(self) -> int:
        return self.v.numel() * self.v.element_size()
