"""Llama-family dense decoder (Llama 2/3, Qwen2, Qwen3, Mistral) in plain PyTorch.

Parameter names follow Hugging Face's so that a `model.safetensors` loads without renaming.
"""

from __future__ import annotations

import torch
from torch import nn

from tessera.config import ModelConfig
from tessera.layers.attention import Attention
from tessera.layers.mlp import SwiGLU
from tessera.layers.norm import RMSNorm
from tessera.layers.rope import RotaryEmbedding


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.self_attn = Attention(cfg, layer_idx)
        self.mlp = SwiGLU(cfg.hidden_size, cfg.intermediate_size)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, x, cos, sin, cache=None, ctx=None):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, cache, ctx)
        return x + self.mlp(self.post_attention_layernorm(x))


class LlamaModel(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg, i) for i in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.rotary = RotaryEmbedding(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling)


class LlamaForCausalLM(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.model = LlamaModel(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def forward(
        self,
        input_ids: torch.Tensor,  # [B, S]
        positions: torch.Tensor | None = None,  # [B, S] logical positions
        cache=None,
        ctx=None,
        logits_index: torch.Tensor | None = None,  # [B]: compute logits only at these positions
    ) -> torch.Tensor:
        B, S = input_ids.shape
        if positions is None:
            positions = torch.arange(S, device=input_ids.device).expand(B, S)
        x = self.model.embed_tokens(input_ids)  # [B, S, hidden]
        cos, sin = self.model.rotary.cos_sin(positions, x.dtype)
        for layer in self.model.layers:
            x = layer(x, cos, sin, cache, ctx)
        if logits_index is not None:
            x = x[torch.arange(B, device=x.device), logits_index][:, None]  # [B, 1, hidden]
        return self.lm_head(self.model.norm(x))  # [B, S or 1, vocab]

    def num_parameters(self) -> int:
        return sum(p.numel() for p in {id(p): p for p in self.parameters()}.values())
