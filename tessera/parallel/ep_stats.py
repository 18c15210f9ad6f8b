"""What one expert-parallel MoE layer did on this rank: the routing counts every MoE layer keeps, plus rows
sent to and received from each rank, bytes moved and the time spent in dispatch, experts and combine.

It replaces the layer's `RoutingStats`, so whatever resets routing statistics (the engine, before each
`generate`) resets these too; `tessera generate --ep N --stats` prints them per layer.
"""

from __future__ import annotations

import time
from contextlib import contextmanager

import torch

from tessera.kernels.moe.ep_layout import DispatchLayout
from tessera.layers.moe import RoutingStats

PHASES = ("dispatch", "experts", "combine")


class EPStats(RoutingStats):
    def __init__(self, num_experts: int, world: int, rank: int):
        super().__init__(num_experts)
        self.world, self.rank = world, rank
        self.reset()

    def reset(self) -> None:
        super().reset()
        self.sent = torch.zeros(self.world, dtype=torch.long)  # [W] rows this rank sent to each rank
        self.received = torch.zeros(self.world, dtype=torch.long)  # [W] rows it received from each rank
        self.bytes_out = 0  # bytes of rows dispatched to other ranks (combine sends as many back)
        self.seconds = dict.fromkeys(PHASES, 0.0)
        self.calls = 0

    def add_exchange(self, layout: DispatchLayout, row_bytes: int) -> None:
        self.add_counts(layout.send_counts, layout.recv_counts, row_bytes)

    def add_counts(self, send_counts: list[int], recv_counts: list[int], row_bytes: int) -> None:
        """Rows this rank sent to / received from each rank in one call, each `row_bytes` long."""
        self.sent += torch.tensor(send_counts)
        self.received += torch.tensor(recv_counts)
        self.bytes_out += (sum(send_counts) - send_counts[self.rank]) * row_bytes
        self.calls += 1

    @contextmanager
    def timer(self, phase: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] += time.perf_counter() - t0

    def summary(self) -> str:
        ms = "  ".join(f"{p} {self.seconds[p] * 1e3:.1f} ms" for p in PHASES)
        return (f"rank {self.rank}: rows sent to ranks {self.sent.tolist()}, received from ranks "
                f"{self.received.tolist()}, {self.bytes_out / 2**10:.1f} KiB dispatched to peers "
                f"in {self.calls} calls; {ms}")
