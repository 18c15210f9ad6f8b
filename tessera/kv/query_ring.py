"""The recent-query ring a dense cache keeps for presses that score keys with real queries (R-KV,
SnapKV at decode time): per layer the last `window` post-RoPE queries of every row, [B, Hq, W, D],
oldest first. Created only when a press asks (`PressTarget.request_queries`)."""

from __future__ import annotations

import torch

from tessera.kv.backend import StepContext


class QueryRing:
    def __init__(self, num_layers: int, window: int):
        if window < 1:
            raise ValueError(f"query window must be >= 1, got {window}")
        self.window = window
        self.q: list[torch.Tensor | None] = [None] * num_layers  # [B, Hq, W, D] once a layer has run

    def record(self, layer: int, q: torch.Tensor, ctx: StepContext) -> None:
        """q [B, Hq, S, D]: the new post-RoPE queries of this step (right-padded at prefill)."""
        W = self.window
        if ctx.is_prefill:  # last W valid prompt queries of each row (right padding!)
            B, Hq, S, D = q.shape
            buf = q.new_zeros(B, Hq, W, D)
            for b in range(B):
                n = int(ctx.new_lens[b])
                take = min(W, n)
                buf[b, :, W - take :] = q[b, :, n - take : n]
            self.q[layer] = buf
        else:
            prev = self.q[layer]
            self.q[layer] = q if prev is None else torch.cat([prev, q], 2)[:, :, -W:]

    def get(self, layer: int, rows: torch.Tensor) -> torch.Tensor:  # -> [R, Hq, W, D]
        if self.q[layer] is None:
            raise RuntimeError(f"no queries recorded yet for layer {layer}")
        return self.q[layer][rows]

    def select(self, rows: torch.Tensor) -> None:
        self.q = [None if t is None else t[rows] for t in self.q]

    def extend(self, other: QueryRing) -> None:
        """Append the rows of `other` (continuous batching); both must have recorded every layer."""
        if other.window != self.window or any(t is None for t in (*self.q, *other.q)):
            raise ValueError("extend: the query rings differ in window or have not recorded every layer")
        self.q = [torch.cat([a, b]) for a, b in zip(self.q, other.q)]

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.q if t is not None)
