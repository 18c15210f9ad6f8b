"""Expert tensors between the per-expert checkpoint layout and the fused one the model holds.

    per expert (disk):  {layer}.{prefix}.experts.{i}.{gate|up|down}.weight   [I, H] / [I, H] / [H, I]
    fused (model):      {layer}.mlp.experts.gate_up_proj [E, 2I, H] (gate rows first), .down_proj [E, H, I]

`prefix` and the projection names are the family's (`block_sparse_moe` with w1 / w3 / w2 for Mixtral,
`mlp` with gate_proj / up_proj / down_proj for Qwen-MoE and OLMoE); Mixtral's router also moves from
`block_sparse_moe.gate` to `mlp.gate`. A checkpoint that already holds fused tensors passes unchanged.
"""

from __future__ import annotations

import torch

from tessera.config import ModelConfig
from tessera.models.families import family_of


def _layer_keys(cfg: ModelConfig, i: int):
    f = family_of(cfg.model_type)
    old = f"model.layers.{i}.{f.moe_prefix}"
    return old, f"model.layers.{i}.mlp", f.expert_names


def fuse_experts(state: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Per-expert checkpoint tensors -> fused model tensors; names the first missing expert tensor."""
    for i in range(cfg.num_hidden_layers):
        if not cfg.is_moe_layer(i):
            continue
        old, new, (g, u, d) = _layer_keys(cfg, i)
        if old != new:  # Mixtral: block_sparse_moe.* -> mlp.*
            for k in [k for k in state if k.startswith(old + ".")]:
                state[new + k[len(old):]] = state.pop(k)
        if f"{new}.experts.gate_up_proj" in state:
            continue
        keys = [[f"{new}.experts.{e}.{n}.weight" for n in (g, u, d)] for e in range(cfg.num_experts)]
        missing = [k for ks in keys for k in ks if k not in state]
        if missing:
            first = missing[0].replace(new + ".", old + ".", 1)
            raise ValueError(f"checkpoint lacks expert tensor {first!r} ({len(missing)} expert tensors missing)")
        state[f"{new}.experts.gate_up_proj"] = torch.stack([torch.cat([state[kg], state[ku]]) for kg, ku, _ in keys])
        state[f"{new}.experts.down_proj"] = torch.stack([state[kd] for _, _, kd in keys])
        for ks in keys:
            for k in ks:
                del state[k]
    return state


def split_experts(state: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Fused model tensors -> the family's per-expert checkpoint layout (the inverse of `fuse_experts`)."""
    state = dict(state)
    for i in range(cfg.num_hidden_layers):
        if not cfg.is_moe_layer(i):
            continue
        old, new, (g, u, d) = _layer_keys(cfg, i)
        gate_up, down = state.pop(f"{new}.experts.gate_up_proj"), state.pop(f"{new}.experts.down_proj")
        ffn = down.shape[2]
        for e in range(cfg.num_experts):
            state[f"{old}.experts.{e}.{g}.weight"] = gate_up[e, :ffn].contiguous()
            state[f"{old}.experts.{e}.{u}.weight"] = gate_up[e, ffn:].contiguous()
            state[f"{old}.experts.{e}.{d}.weight"] = down[e].contiguous()
        if old != new:
            for k in [k for k in state if k.startswith(new + ".")]:
                state[old + k[len(new):]] = state.pop(k)
        if cfg.model_type == "qwen2_moe" and not cfg.shared_expert_intermediate_size:
            # transformers' Qwen2-MoE block always builds a shared expert: a 0-wide one (and a zero gate) adds
            # exactly nothing, and writing it lets transformers load the file without reporting missing tensors
            h = cfg.hidden_size
            for n, shape in (("gate_proj", (0, h)), ("up_proj", (0, h)), ("down_proj", (h, 0))):
                state[f"{new}.shared_expert.{n}.weight"] = torch.zeros(shape)
            state[f"{new}.shared_expert_gate.weight"] = torch.zeros(1, h)
    return state
