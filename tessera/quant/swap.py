"""Quantize a model: convert the state dict of its linears, swap the modules, load.

    model = quantize_model(LlamaForCausalLM(cfg), "w8a8")

The lm_head stays in floating point by default: it is one matrix, the most accuracy-sensitive, and
often tied to the embedding.
"""

from __future__ import annotations

from torch import nn

from tessera.quant.experts import split_experts
from tessera.quant.fuse import fuse_projections
from tessera.quant.linear import Int4Linear, Int8Linear

SCHEMES = ("w8a8", "w4a8")


def _targets(model: nn.Module, skip: tuple[str, ...]) -> dict[str, nn.Linear]:
    return {name: m for name, m in model.named_modules()
            if isinstance(m, nn.Linear) and not any(name == s or name.endswith("." + s) for s in skip)}


def _check_scheme(scheme: str):
    if scheme not in SCHEMES:
        raise ValueError(f"unknown quantization scheme {scheme!r}; choose one of {SCHEMES}")


def quantize_state_dict(model: nn.Module, scheme: str, group: int = 128, skip=("lm_head",)) -> dict:
    """The model's state dict with each target linear's `weight` replaced by packed int buffers."""
    _check_scheme(scheme)
    sd = dict(model.state_dict())
    for name, lin in _targets(model, skip).items():
        pw = Int8Linear.pack(lin) if scheme == "w8a8" else Int4Linear.pack(lin, group)
        del sd[f"{name}.weight"]
        sd[f"{name}.qweight"] = pw.data
        sd[f"{name}.weight_scale" if scheme == "w8a8" else f"{name}.scales"] = pw.scale
        if lin.bias is not None:
            sd[f"{name}.bias"] = pw.bias
    return sd


def swap_linears(model: nn.Module, scheme: str, group: int = 128, skip=("lm_head",)) -> nn.Module:
    """Replace each target nn.Linear by an empty Int8Linear / Int4Linear of the same shape."""
    _check_scheme(scheme)
    for name, lin in _targets(model, skip).items():
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        args = (lin.in_features, lin.out_features, lin.bias is not None)
        new = Int8Linear(*args) if scheme == "w8a8" else Int4Linear(*args, group=group)
        setattr(parent, child, new.to(lin.weight.device))  # load_state_dict copies into the buffers' device
    return model


#: not worth quantizing: the output head (accuracy) and Qwen2-MoE's one-output shared-expert gate
DEFAULT_SKIP = ("lm_head", "shared_expert_gate")


def quantize_model(model: nn.Module, scheme: str, group: int = 128, skip=DEFAULT_SKIP, fuse: bool = True) -> nn.Module:
    """In place: quantize every nn.Linear except `skip` to `scheme` ("w8a8" or "w4a8"); returns model.
    fuse: first merge q/k/v and gate/up into one linear each (`fuse_projections`: same outputs, bit for
    bit, in fewer calls). Routed experts become one linear per expert and projection first
    (`tessera.quant.experts`), so they are quantized too; the routers stay in floating point."""
    _check_scheme(scheme)
    if scheme == "w4a8" and any(p.is_cuda for p in model.parameters()):
        raise ValueError("w4a8 has CPU kernels only; on CUDA use w8a8 (Triton)")
    split_experts(model)
    if fuse:
        fuse_projections(model)
    sd = quantize_state_dict(model, scheme, group, skip)
    swap_linears(model, scheme, group, skip)
    model.load_state_dict(sd)
    return model
