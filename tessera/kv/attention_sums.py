"""Accumulated attention per cache slot, for presses that evict by the attention a token has received (H2O).

Per layer [B, Hkv, C] fp32, slot-aligned with the dense cache's keys (the cache grows, gathers and
shrinks it with them): the softmax attention each slot received from every query so far, summed over
the query heads of its KV head's group. It costs one extra Q K^T per step, so a cache keeps it only
when a press asks (`PressTarget.request_attention_sums`).
"""

from __future__ import annotations

import torch


class AttentionSums:
    def __init__(self, capacities: list[int], batch: int, heads: int, device):
        # zeros at the cache's current capacity: attention is counted from the next forward on
        self.a = [torch.zeros(batch, heads, c, device=device) for c in capacities]

    def add(self, layer: int, q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor) -> None:
        """Add the softmax attention of the new queries q [B, Hq, S, D] over the keys k [B, Hkv, T, D]
        held in slots [0, T), under the visibility mask [B, S, T]. Padded prefill queries must be masked
        out entirely by the caller: they then contribute nothing."""
        B, Hq, S, D = q.shape
        H = k.shape[1]
        G = Hq // H
        logits = torch.einsum("bhgsd,bhtd->bhgst", q.float().view(B, H, G, S, D), k.float()) / D**0.5
        logits = logits.masked_fill(~mask[:, None, None], float("-inf"))
        p = torch.softmax(logits, -1).nan_to_num(0.0)  # rows with no visible key -> 0
        T = k.shape[2]
        self.a[layer][:, :, :T] += p.sum((2, 3))

    def get(self, layer: int, rows: torch.Tensor, n: int) -> torch.Tensor:  # -> [R, Hkv, n]
        return self.a[layer][rows, :, :n]

    # ---- kept slot-aligned with the cache ---------------------------------------------------
    def grow(self, layer: int, pad: int) -> None:
        a = self.a[layer]
        self.a[layer] = torch.cat([a, a.new_zeros(a.shape[0], a.shape[1], pad)], 2)

    def keep(self, layer: int, rows: torch.Tensor, idx: torch.Tensor) -> None:
        """idx [R, Hkv, n]: as `DenseCache.keep`."""
        a, n = self.a[layer], idx.shape[-1]
        a[rows, :, :n] = a[rows].gather(2, idx.to(torch.long))
        a[rows, :, n:] = 0  # freed slots will receive new tokens: they start with no mass

    def truncate(self, layer: int, cap: int) -> None:
        self.a[layer] = self.a[layer][:, :, :cap].clone()

    def select(self, rows: torch.Tensor) -> None:
        self.a = [a[rows] for a in self.a]

    def extend(self, other: AttentionSums, capacities: list[int]) -> None:
        """Append the rows of `other`, both padded with zeros to the cache's merged `capacities` per layer."""
        pad = lambda a, c: torch.cat([a, a.new_zeros(a.shape[0], a.shape[1], c - a.shape[2])], 2)
        self.a = [torch.cat([pad(a, c), pad(b, c)]) for a, b, c in zip(self.a, other.a, capacities)]

    def nbytes(self) -> int:
        return sum(a.numel() * a.element_size() for a in self.a)
