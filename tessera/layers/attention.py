"""Grouped-query attention (Ainslie et al., 2023) over a pluggable KV-cache backend.

The layer projects and rotates; *where* keys and values live and how attention over them is
computed belongs to the cache backend (`tessera.kv.cache`), so dense, compressed (R-KV) and
offloaded (ShadowKV) caches plug in without the layer knowing which one runs (the engine never asks which one).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tessera.config import ModelConfig
from tessera.layers.norm import RMSNorm
from tessera.layers.rope import apply_rope


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Causal SDPA, q [B, Hq, S, D], k/v [B, Hkv, S, D] -> [B, Hq, S, D]; one query row needs no mask.

    A branch, not `is_causal=S > 1`: under torch.compile(dynamic=True) S is symbolic, and SDPA refuses a
    SymBool, which broke the graph at every layer (the model's layer loop then ran eagerly in training)."""
    causal = True if q.shape[2] > 1 else False
    return F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=q.shape[1] != k.shape[1])


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_heads, self.n_kv, self.head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        h, bias = cfg.hidden_size, cfg.attention_bias
        self.q_proj = nn.Linear(h, self.n_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(h, self.n_kv * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(h, self.n_kv * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, h, bias=cfg.o_bias)
        self.qkv_proj, self.qkv_sizes = None, None  # one fused GEMM when set (`tessera.quant.fuse_projections`)
        # "head": one RMSNorm over each head's D (Qwen3); "proj": over the whole projection (OLMoE)
        self.qk_norm, self.clip_qkv = cfg.qk_norm, cfg.clip_qkv
        if cfg.qk_norm:
            per_head = cfg.qk_norm == "head"
            self.q_norm = RMSNorm(self.head_dim if per_head else self.n_heads * self.head_dim, cfg.rms_norm_eps)
            self.k_norm = RMSNorm(self.head_dim if per_head else self.n_kv * self.head_dim, cfg.rms_norm_eps)
        else:
            self.q_norm = self.k_norm = None

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, cache=None, ctx=None):
        B, S, _ = x.shape  # x [B, S, hidden]
        if self.qkv_proj is not None:
            q, k, v = self.qkv_proj(x).split(self.qkv_sizes, dim=-1)  # views of [B, S, (Hq + 2 Hkv) D]
        else:
            q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        if self.qk_norm == "proj":
            q, k = self.q_norm(q), self.k_norm(k)
        if self.clip_qkv is not None:
            q, k, v = (t.clamp(-self.clip_qkv, self.clip_qkv) for t in (q, k, v))
        q = q.view(B, S, self.n_heads, self.head_dim).transpose(1, 2)  # [B, Hq, S, D]
        k = k.view(B, S, self.n_kv, self.head_dim).transpose(1, 2)  # [B, Hkv, S, D]
        v = v.view(B, S, self.n_kv, self.head_dim).transpose(1, 2)  # [B, Hkv, S, D]
        if self.qk_norm == "head":
            q, k = self.q_norm(q), self.k_norm(k)
        if cache is not None and cache.wants_pre_rope_keys:
            cache.observe_pre_rope_keys(self.layer_idx, k, ctx)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is None:
            out = causal_attention(q, k, v)  # [B, Hq, S, D]
        else:
            out = cache.attend(self.layer_idx, q, k, v, ctx)  # [B, Hq, S, D]
        return self.o_proj(out.transpose(1, 2).reshape(B, S, self.n_heads * self.head_dim))
