"""The host tier that holds the values of the whole context (ShadowKV keeps only K factors on the GPU).

On CUDA the buffer is pinned CPU memory; a fetch gathers the chunks on the CPU into a pinned staging
buffer and copies that to the GPU asynchronously (an index of a pinned tensor returns *pageable* memory,
whose copy is synchronous and staged by the driver: 1.08 of 5.2 ms GPU time per 8 steps at 64K on an
H200, benchmarks/results/gpu_check_NVIDIA_H200.md). Upstream reads pinned memory zero-copy from a kernel
instead, which is future work. On CPU there is no second
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
        self._stage = None  # [M_max, C, D] pinned staging buffer (CUDA only), grown on demand
        self._copied = None  # CUDA event: the last copy out of the stage has finished reading it

    def fetch(self, heads: torch.Tensor, chunks: torch.Tensor) -> torch.Tensor:
        """Values of chunk `chunks[i]` of head `heads[i]` -> [M, C, D] on the fast device."""
        _, n, C, D = self.v.shape
        flat = (heads * n + chunks).cpu()  # [M] rows of the [H * n_chunks, C, D] view: one device-to-host copy
        self.bytes_fetched += flat.numel() * C * D * self.v.element_size()
        if self.device.type == "cpu":
            return self.v.view(-1, C, D)[flat]  # a real copy out of the host buffer
        M, cap = flat.numel(), 0 if self._stage is None else self._stage.shape[0]
        if self._copied is not None:  # the previous async copy may still read the stage: wait for it alone
            self._copied.synchronize()  # (with indices on the GPU, `.cpu()` above has waited already)
        if M > cap:  # grow geometrically: the number of selected chunks varies from step to step
            self._stage = torch.empty(max(M, 2 * cap), C, D, dtype=self.v.dtype, pin_memory=True)
        stage = torch.index_select(self.v.view(-1, C, D), 0, flat, out=self._stage[:M])
        out = stage.to(self.device, non_blocking=True)  # [M, C, D]
        self._copied = torch.cuda.Event()
        self._copied.record()
        return out

    def select(self, heads: torch.Tensor) -> None:
        """Keep the values of flattened heads `heads` (rows that left the batch free their host memory);
        the transfer count keeps what departed rows fetched."""
        kept = self.v[heads.cpu()]
        self.v = kept.pin_memory() if self.v.is_pinned() else kept

    def nbytes(self) -> int:
        return self.v.numel() * self.v.element_size()
