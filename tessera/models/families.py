"""Model families: a registry keyed by the checkpoint's `model_type`, not an if-chain.

A family knows how its `config.json` spells things (`num_local_experts` or `num_experts`, `qkv_bias` or
`attention_bias`, ...), which Hugging Face class name to write back, and where its per-expert tensors
live in a checkpoint. Everything else (the decoder, the loader) is shared. Adding a family is one
`register(Family(...))` call with a `parse` function.

    cfg = config_from_hf(json.load(open("config.json")))
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields

from tessera.config import ModelConfig


@dataclass(frozen=True)
class Family:
    model_type: str
    architecture: str  # the transformers class `save_model` names in config.json
    parse: Callable[[dict], dict]  # config.json -> the family's own ModelConfig fields
    #: legacy per-expert checkpoint keys: `{prefix}.experts.{i}.{gate}|{up}|{down}.weight`
    moe_prefix: str = "mlp"
    expert_names: tuple[str, str, str] = ("gate_proj", "up_proj", "down_proj")


FAMILIES: dict[str, Family] = {}


def register(family: Family) -> Family:
    FAMILIES[family.model_type] = family
    return family


def family_of(model_type: str) -> Family:
    if model_type not in FAMILIES:
        raise ValueError(f"unsupported model_type {model_type!r}; supported: {', '.join(sorted(FAMILIES))}")
    return FAMILIES[model_type]


def _first(d: dict, *names, default=None):
    """The first spelling of a field that the checkpoint uses (real configs disagree on names)."""
    for n in names:
        if d.get(n) is not None:
            return d[n]
    return default


def _int(d: dict, *names, default=None) -> int:
    """The first spelling present, which must be an integer (JSON true is not a count; "8" is not 8)."""
    v = _first(d, *names, default=default)
    if not isinstance(v, int) or isinstance(v, bool):
        raise ValueError(f"{names[0]!r} must be an integer, got {v!r}")
    return v


def _number(d: dict, *names, default=None) -> float:
    v = _first(d, *names, default=default)
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        raise ValueError(f"{names[0]!r} must be a number, got {v!r}")
    return float(v)


def _experts(d: dict, expert_ffn: int) -> dict:
    """MoE fields common to every family; `expert_ffn` is the width of one routed expert."""
    layers = _first(d, "mlp_only_layers", default=())
    if not isinstance(layers, (list, tuple)):
        raise ValueError(f"'mlp_only_layers' must be a list of layer indices, got {layers!r}")
    return dict(num_experts=_int(d, "num_local_experts", "num_experts", "n_routed_experts", default=0),
                num_experts_per_tok=_int(d, "num_experts_per_tok", "moe_top_k", default=0),
                moe_intermediate_size=expert_ffn,
                decoder_sparse_step=_int(d, "decoder_sparse_step", default=1),
                mlp_only_layers=tuple(layers),
                router_aux_loss_coef=_number(d, "router_aux_loss_coef", default=0.0))


def _dense(d):
    return {}


def _qwen2(d):
    return {"attention_bias": bool(_first(d, "attention_bias", "qkv_bias", default=True))}


def _qwen3(d):
    return {"qk_norm": "head"}


def _mixtral(d):  # every layer routed; top-k always renormalised (transformers' MixtralTopKRouter)
    return {**_experts(d, d["intermediate_size"]), "norm_topk_prob": True}


def _qwen_moe(d, qk_norm: str, bias_default: bool):
    return {**_experts(d, _int(d, "moe_intermediate_size", default=d["intermediate_size"])),
            "norm_topk_prob": bool(_first(d, "norm_topk_prob", default=False)),
            "shared_expert_intermediate_size": _int(d, "shared_expert_intermediate_size", default=0),
            "attention_bias": bool(_first(d, "qkv_bias", "attention_bias", default=bias_default)),
            "qk_norm": qk_norm}


def _olmoe(d):  # q/k norms over the whole projection, optional clamp, o_proj shares the q/k/v bias flag
    bias = bool(d.get("attention_bias", False))
    return {**_experts(d, d["intermediate_size"]), "norm_topk_prob": bool(d.get("norm_topk_prob", False)),
            "qk_norm": "proj", "attention_bias": bias, "o_bias": bias, "clip_qkv": d.get("clip_qkv")}


register(Family("llama", "LlamaForCausalLM", _dense))
register(Family("mistral", "MistralForCausalLM", _dense))
register(Family("qwen2", "Qwen2ForCausalLM", _qwen2))
register(Family("qwen3", "Qwen3ForCausalLM", _qwen3))
register(Family("mixtral", "MixtralForCausalLM", _mixtral, "block_sparse_moe", ("w1", "w3", "w2")))
register(Family("qwen2_moe", "Qwen2MoeForCausalLM", lambda d: _qwen_moe(d, "", True)))
register(Family("qwen3_moe", "Qwen3MoeForCausalLM", lambda d: _qwen_moe(d, "head", False)))
register(Family("olmoe", "OlmoeForCausalLM", _olmoe))


def config_from_hf(d: dict) -> ModelConfig:
    """Build a ModelConfig from the dict of a Hugging Face config.json."""
    if not isinstance(d, dict):
        raise ValueError(f"must hold a JSON object, got {type(d).__name__}")
    family = family_of(d.get("model_type", "llama"))
    for f in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads"):
        if d.get(f) is None:
            raise ValueError(f"the required field {f!r} is missing")
        if _int(d, f) <= 0:
            raise ValueError(f"{f!r} must be positive, got {d[f]}")
    heads, hidden = d["num_attention_heads"], d["hidden_size"]
    if d.get("head_dim") is None and hidden % heads:
        raise ValueError(f"hidden_size {hidden} is not divisible by num_attention_heads {heads} and there is no "
                         "head_dim to say the head width")
    theta, rs = d.get("rope_theta"), d.get("rope_scaling") or None
    rp = d.get("rope_parameters")  # transformers >= 5 keeps theta and scaling here
    if isinstance(rp, dict):
        theta = rp.get("rope_theta", theta)
        if rp.get("rope_type", "default") != "default":
            rs = rp
    if rs is not None and not isinstance(rs, dict):
        raise ValueError(f"'rope_scaling' must be an object or null, got {rs!r}")
    if theta is not None and (not isinstance(theta, (int, float)) or isinstance(theta, bool)):
        raise ValueError(f"'rope_theta' must be a number, got {theta!r}")
    known = {f.name for f in fields(ModelConfig)}
    kw = {k: v for k, v in d.items() if k in known and v is not None}
    for k in ("attention_bias", "qk_norm", "norm_topk_prob", "num_experts", "num_experts_per_tok",
              "decoder_sparse_step", "mlp_only_layers", "shared_expert_intermediate_size", "clip_qkv",
              "moe_intermediate_size", "router_aux_loss_coef"):
        kw.pop(k, None)  # these mean what the family says, not what a same-named key happens to hold
    # an explicit 0 stays 0 (ModelConfig refuses it) instead of silently meaning "as many as heads"
    kw.update(head_dim=d["head_dim"] if d.get("head_dim") is not None else hidden // heads,
              num_key_value_heads=d["num_key_value_heads"] if d.get("num_key_value_heads") is not None else heads,
              rope_theta=float(theta or 10000.0), rope_scaling=rs, model_type=family.model_type)
    kw.update(family.parse(d))
    return ModelConfig(**kw)


def config_to_hf(c: ModelConfig) -> dict:
    """The config.json that `transformers.AutoConfig` reads back as the same architecture."""
    family = family_of(c.model_type)
    d = {"architectures": [family.architecture], "model_type": c.model_type}
    for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
              "num_key_value_heads", "head_dim", "max_position_embeddings", "rms_norm_eps", "rope_theta",
              "rope_scaling", "tie_word_embeddings", "bos_token_id", "eos_token_id", "pad_token_id"):
        d[k] = getattr(c, k)
    d.update(hidden_act="silu", attention_bias=c.attention_bias, torch_dtype="float32")
    if c.model_type in ("qwen2_moe", "qwen3_moe"):
        d["qkv_bias"] = c.attention_bias
    if c.clip_qkv is not None:
        d["clip_qkv"] = c.clip_qkv
    if c.num_experts:
        d.update(num_experts=c.num_experts, num_local_experts=c.num_experts,
                 num_experts_per_tok=c.num_experts_per_tok, norm_topk_prob=c.norm_topk_prob,
                 decoder_sparse_step=c.decoder_sparse_step, mlp_only_layers=list(c.mlp_only_layers),
                 router_aux_loss_coef=c.router_aux_loss_coef, output_router_logits=False)
        if c.model_type in ("qwen2_moe", "qwen3_moe"):
            d["moe_intermediate_size"] = c.moe_intermediate_size
        if c.shared_expert_intermediate_size or c.model_type == "qwen2_moe":  # transformers' default is 5632, not 0
            d["shared_expert_intermediate_size"] = c.shared_expert_intermediate_size
    back = config_from_hf(d)
    lost = [f.name for f in fields(ModelConfig) if getattr(back, f.name) != getattr(c, f.name)]
    if lost:  # e.g. a Mixtral whose experts are narrower than intermediate_size: config.json cannot say so
        raise ValueError(f"a {c.model_type} config.json cannot express this model: {', '.join(lost)} would "
                         f"read back differently")
    return d
