"""The KV-cache backend protocol: what the attention layer and the engine call on a cache.

A backend owns where keys and values live and how a layer attends over them. The attention layer
calls `attend(layer, q, k, v, ctx)` (and `observe_pre_rope_keys` when the backend declares
`wants_pre_rope_keys`); the engine calls `select()` (drop finished sequences) and `nbytes()`.
What a KV-compression press may do on a cache is a separate, narrower protocol
(`tessera.kv.press_target.PressTarget`), which only the dense cache implements.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tessera.layers.attention import causal_attention


@dataclass
class StepContext:
    """What one forward pass needs to know besides the tensors: one per step, no global state."""

    positions: torch.Tensor  # [B, S] logical positions of the new tokens
    new_lens: torch.Tensor  # [B] valid new tokens per sequence (prefill is right-padded)
    is_prefill: bool


def prefill_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, new_lens: torch.Tensor) -> torch.Tensor:
    """Causal attention over a right-padded prompt batch: q [B, Hq, S, D], k/v [B, H, S, D], new_lens [B]
    real tokens per row -> [B, Hq, S, D]. Padding sits after a row's real tokens, so the causal mask alone
    keeps it out of every real query (pad queries' outputs are never read). No explicit mask: with one,
    SDPA falls back to its math path and materialises [B, Hq, S, S] scores (16 GiB at 32K tokens);
    `is_causal` takes the flash kernel on CPU and GPU."""
    return causal_attention(q, k, v)


class KVCache:
    """Protocol every backend implements (dense, ShadowKV, Quest, the SharedPrefill fan-out)."""

    #: The attention layer hands this backend each layer's keys before RoPE, through
    #: `observe_pre_rope_keys`, ahead of `attend` (ShadowKV factorises pre-RoPE keys).
    wants_pre_rope_keys: bool = False

    def attend(self, layer: int, q, k, v, ctx: StepContext) -> torch.Tensor:
        """q [B, Hq, S, D], k/v [B, Hkv, S, D] post-RoPE new tokens -> attention output [B, Hq, S, D]."""
        raise NotImplementedError

    def observe_pre_rope_keys(self, layer: int, k_pre: torch.Tensor, ctx: StepContext) -> None:
        """k_pre [B, Hkv, S, D]: the new keys before RoPE; called only if `wants_pre_rope_keys`."""
        raise NotImplementedError(f"{type(self).__name__} declares no use for pre-RoPE keys")

    def select(self, rows: torch.Tensor) -> None:
        """Keep only batch rows `rows` [R] (finished sequences leave the batch)."""
        raise NotImplementedError

    def nbytes(self) -> int:
        """Bytes of device memory the cache holds right now (allocated, not just used)."""
        raise NotImplementedError


class SparseDecodeCache(KVCache):
    """Backends that attend densely over the prompt and sparsely while decoding (ShadowKV, Quest):
    a prefill only `ingest`s the prompt's K/V into the backend's own layout (SharedPrefill calls
    `ingest` alone, to pay the dense attention once for several backends)."""

    def attend(self, layer: int, q, k, v, ctx: StepContext) -> torch.Tensor:
        if ctx.is_prefill:
            self.ingest(layer, k, v, ctx)
            return prefill_attention(q, k, v, ctx.new_lens)
        return self._decode(layer, q, k, v)

    def ingest(self, layer: int, k, v, ctx: StepContext) -> None:
        """k/v [B, Hkv, S, D] post-RoPE prompt keys/values (right-padded to `ctx.new_lens`)."""
        raise NotImplementedError

    def _decode(self, layer: int, q, k, v) -> torch.Tensor:
        raise NotImplementedError
