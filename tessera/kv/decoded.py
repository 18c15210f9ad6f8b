"""The decoded-token region of the sparse backends (ShadowKV, Quest): every generated token's K/V is kept
dense and attended at every later step. It grows in steps (amortised copies) and never drops a token, so a
long generation cannot silently lose context."""

from __future__ import annotations

import torch


class DecodedKV:
    def __init__(self, batch: int, heads: int, head_dim: int, like: torch.Tensor, growth: int = 64):
        self.k = like.new_zeros(batch, heads, 0, head_dim)  # [B, H, cap, D] post-RoPE
        self.v = like.new_zeros(batch, heads, 0, head_dim)
        self.len, self.growth = 0, growth

    def append(self, k: torch.Tensor, v: torch.Tensor) -> None:
        """k, v [B, H, 1, D]: one decoded token of every row."""
        if self.len == self.k.shape[2]:
            pad = self.k.new_zeros(*self.k.shape[:2], self.growth, self.k.shape[3])
            self.k, self.v = torch.cat([self.k, pad], 2), torch.cat([self.v, pad], 2)
        self.k[:, :, self.len] = k[:, :, 0]
        self.v[:, :, self.len] = v[:, :, 0]
        self.len += 1

    def keys(self) -> torch.Tensor:  # [B, H, len, D]
        return self.k[:, :, :self.len]

    def values(self) -> torch.Tensor:  # [B, H, len, D]
        return self.v[:, :, :self.len]

    def select(self, rows: torch.Tensor) -> None:
        self.k, self.v = self.k[rows], self.v[rows]

    def tensors(self) -> list[torch.Tensor]:
        return [self.k, self.v]
