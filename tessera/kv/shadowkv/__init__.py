"""ShadowKV (Sun et al., arXiv 2410.21465): low-rank pre-RoPE keys, offloaded values, sparse chunk decode.

Registered as the KV backend "shadowkv": `llm.generate(prompts, sp, kv="shadowkv",
kv_options={"sparse_budget": 2048, "rank": 160})`, or `tessera generate --kv shadowkv --sparse-budget N
--rank R [--landmark bounds]`. Presses do not compose with it (it already decides what is attended).
"""

from __future__ import annotations

import dataclasses

from tessera.kv.registry import check_backend_args, register_backend
from tessera.kv.shadowkv.cache import ShadowKVCache
from tessera.kv.shadowkv.options import ShadowKVOptions
from tessera.layers.rope import RotaryEmbedding

__all__ = ["ShadowKVCache", "ShadowKVOptions"]


@register_backend("shadowkv")
def _shadowkv(cfg, batch, dtype, device, press, **options) -> ShadowKVCache:
    check_backend_args("shadowkv", press, options, {f.name for f in dataclasses.fields(ShadowKVOptions)})
    opts = ShadowKVOptions(**options)
    rope = RotaryEmbedding(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling)
    return ShadowKVCache(cfg.num_hidden_layers, cfg.num_key_value_heads, cfg.head_dim, rope, opts, device)
