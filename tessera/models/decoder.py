"""The decoder every family shares (Llama 2/3, Qwen2, Qwen3, Mistral, Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE).

Parameter names follow Hugging Face's (transformers >= 5 for the fused expert tensors), so a checkpoint
loads with at most the per-expert key conversion of `tessera.models.loader`.

Each layer is two halves with one small interface, hidden states in and hidden states out:

    x = layer.attention_half(x, step)   # norm, attention over the KV cache, residual
    x = layer.ffn_half(x)               # norm, dense MLP or MoE block, residual

so a runtime can run the halves on different ranks (MegaScale-Infer, arXiv 2504.02263) or swap the FFN
half for an expert-parallel one (COMET, arXiv 2502.19811) without touching this file.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from tessera.config import ModelConfig
from tessera.layers.attention import Attention
from tessera.layers.mlp import SwiGLU
from tessera.layers.moe import MoEBlock
from tessera.layers.norm import RMSNorm
from tessera.layers.rope import RotaryEmbedding


@dataclass
class LayerStep:
    """What the attention half needs besides the hidden states, the same for every layer of one forward."""

    cos: torch.Tensor  # [B, S, D] rotary tables at the tokens' logical positions
    sin: torch.Tensor
    cache: object = None  # a `tessera.kv` cache backend, or None (no cache: plain causal attention)
    ctx: object = None  # the cache's `StepContext` (positions, new lengths, prefill or decode)


@dataclass(frozen=True)
class KVLayout:
    """What a KV cache must hold for this model on this rank (heads are per rank under TP)."""

    num_layers: int
    num_heads: int  # query heads
    num_kv_heads: int
    head_dim: int


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.self_attn = Attention(cfg, layer_idx)
        self.mlp = MoEBlock(cfg) if cfg.is_moe_layer(layer_idx) else SwiGLU(cfg.hidden_size, cfg.intermediate_size)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    @property
    def is_moe(self) -> bool:  # an MoE block or a replacement of it (expert parallelism), not a dense MLP
        return not isinstance(self.mlp, SwiGLU)

    def attention_half(self, x: torch.Tensor, step: LayerStep) -> torch.Tensor:  # [B, S, H] -> [B, S, H]
        return x + self.self_attn(self.input_layernorm(x), step.cos, step.sin, step.cache, step.ctx)

    def ffn_half(self, x: torch.Tensor) -> torch.Tensor:  # [B, S, H] -> [B, S, H]
        return x + self.mlp(self.post_attention_layernorm(x))

    def forward(self, x: torch.Tensor, step: LayerStep) -> torch.Tensor:
        return self.ffn_half(self.attention_half(x, step))


class DecoderModel(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg, i) for i in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.rotary = RotaryEmbedding(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling)


class CausalLM(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.model = DecoderModel(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    # -- the forward, in pieces a runtime can call one by one -------------------------------------------
    def embed(self, input_ids: torch.Tensor, positions: torch.Tensor | None = None, cache=None, ctx=None):
        """input_ids [B, S] -> (hidden [B, S, H], the LayerStep every layer's attention half takes)."""
        B, S = input_ids.shape
        if positions is None:
            positions = torch.arange(S, device=input_ids.device).expand(B, S)
        x = self.model.embed_tokens(input_ids)
        cos, sin = self.model.rotary.cos_sin(positions, x.dtype)
        return x, LayerStep(cos, sin, cache, ctx)

    def logits(self, x: torch.Tensor, logits_index: torch.Tensor | None = None) -> torch.Tensor:
        """Final norm and LM head; logits_index [B]: only at these positions -> [B, 1, vocab]."""
        if logits_index is not None:
            x = x[torch.arange(x.shape[0], device=x.device), logits_index][:, None]  # [B, 1, H]
        return self.lm_head(self.model.norm(x))

    def forward(
        self,
        input_ids: torch.Tensor,  # [B, S]
        positions: torch.Tensor | None = None,  # [B, S] logical positions
        cache=None,
        ctx=None,
        logits_index: torch.Tensor | None = None,  # [B]: compute logits only at these positions
    ) -> torch.Tensor:
        x, step = self.embed(input_ids, positions, cache, ctx)
        for layer in self.model.layers:
            x = layer(x, step)
        return self.logits(x, logits_index)  # [B, S or 1, vocab]

    # -- what callers may ask instead of reaching into layers ---------------------------------------------
    def kv_layout(self) -> KVLayout:
        attn = self.model.layers[0].self_attn  # heads are per rank once tensor parallelism split them
        return KVLayout(len(self.model.layers), attn.n_heads, attn.n_kv, attn.head_dim)

    def moe_blocks(self) -> dict[int, nn.Module]:
        """Layer index -> MoE block (`MoEBlock` or its expert-parallel replacement) of the routed layers."""
        return {i: layer.mlp for i, layer in enumerate(self.model.layers) if layer.is_moe}

    def num_parameters(self) -> int:
        return sum(p.numel() for p in {id(p): p for p in self.parameters()}.values())

    def num_active_parameters(self) -> int:
        """Parameters one token uses: all but the routed experts it is not sent to."""
        c, idle = self.config, 0
        for block in self.moe_blocks().values():  # (the experts on this rank, under expert parallelism)
            held = block.experts.gate_up_proj.shape[0]
            per_expert = block.experts.gate_up_proj[0].numel() + block.experts.down_proj[0].numel()
            idle += max(0, held - c.num_experts_per_tok) * per_expert
        return self.num_parameters() - idle


LlamaForCausalLM = CausalLM  # the dense families' name, kept for existing callers
