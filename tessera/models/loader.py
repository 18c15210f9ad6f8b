"""Load and save Hugging Face-format checkpoints from local disk (never from a hub).

Routed experts are held fused (`mlp.experts.gate_up_proj [E, 2I, H]`, `mlp.experts.down_proj [E, H, I]`,
as transformers >= 5 holds them). Checkpoints on disk usually carry one tensor per expert and projection
(`block_sparse_moe.experts.{i}.w1|w3|w2.weight` for Mixtral, `mlp.experts.{i}.gate_proj|up_proj|down_proj
.weight` for the others); `tessera.models.checkpoint` converts both ways, and `save_model` writes the
per-expert layout, which every transformers release loads.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from tessera.config import ModelConfig, ModelFileError
from tessera.layers.rope import RotaryEmbedding
from tessera.models.checkpoint import fuse_experts, split_experts
from tessera.models.decoder import CausalLM
from tessera.models.families import config_from_hf, config_to_hf


def _read_json(f: Path, what: str):
    try:
        return json.loads(f.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise ModelFileError(f"{f}: not UTF-8 text ({e.reason} at byte {e.start}); {what}") from None
    except json.JSONDecodeError as e:
        raise ModelFileError(f"{f}: not valid JSON ({e.msg} at line {e.lineno} column {e.colno}); {what}") from None


def read_config(path: str | Path) -> ModelConfig:
    """config.json of an HF-format directory as a ModelConfig; a bad file raises `ModelFileError` naming it."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"model path {str(path)!r} is not a directory (tessera only loads local HF-format dirs)")
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise FileNotFoundError(f"{cfg_file} not found: an HF-format model dir needs config.json")
    d = _read_json(cfg_file, "is the file truncated?")
    try:
        return config_from_hf(d)
    except ValueError as e:
        raise ModelFileError(f"{cfg_file}: {e}") from None


def _weight_files(path: Path) -> list[Path]:
    single = path / "model.safetensors"
    if single.is_file():
        return [single]
    index = path / "model.safetensors.index.json"
    if index.is_file():
        wm = _read_json(index, "is the file truncated?")
        wm = wm.get("weight_map") if isinstance(wm, dict) else None
        if not isinstance(wm, dict) or not wm or not all(isinstance(v, str) for v in wm.values()):
            raise ModelFileError(f"{index}: needs a non-empty \"weight_map\" object of tensor name -> shard file")
        shards = sorted(set(wm.values()))
        missing = [s for s in shards if not (path / s).is_file()]
        if missing:
            raise FileNotFoundError(f"shards listed in {index} are missing: {missing}")
        return [path / s for s in shards]
    raise FileNotFoundError(f"no model.safetensors or model.safetensors.index.json in {path}")


def _load_weights(f: Path) -> dict[str, torch.Tensor]:
    """One safetensors file, every floating-point tensor finite. A truncated or damaged file (the header is
    checked against the file size by safetensors) and NaN / inf weights raise `ModelFileError`: non-finite
    weights would otherwise load and make every logit NaN, and greedy decoding then emits token 0 silently."""
    try:
        state = load_file(str(f))
    except (SafetensorError, OSError) as e:
        raise ModelFileError(f"{f}: not a readable safetensors file ({e}); it may be truncated or corrupted: "
                             "download or save it again") from None
    for name, t in state.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            nan, inf = int(torch.isnan(t).sum()), int(torch.isinf(t).sum())
            raise ModelFileError(f"{f}: tensor {name} holds {nan} NaN and {inf} infinite values "
                                 "(a corrupted or diverged checkpoint)")
    return state


def load_model(path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
    """Build a `CausalLM` from an HF directory; shapes are checked tensor by tensor."""
    path = Path(path)
    cfg = read_config(path)
    with torch.device("meta"):
        model = CausalLM(cfg)
    state: dict[str, torch.Tensor] = {}
    for f in _weight_files(path):
        state.update(_load_weights(f))
    state = fuse_experts(state, cfg)
    expected = dict(model.state_dict())
    if cfg.tie_word_embeddings:
        expected.pop("lm_head.weight", None)
        state.pop("lm_head.weight", None)
    missing = sorted(set(expected) - set(state))
    if missing:
        raise ModelFileError(f"checkpoint {path} lacks {len(missing)} tensors, e.g. {missing[:3]}")
    for name, t in expected.items():
        if tuple(state[name].shape) != tuple(t.shape):
            raise ModelFileError(
                f"{path}: shape mismatch for {name}: checkpoint has {tuple(state[name].shape)}, "
                f"config.json implies {tuple(t.shape)}"
            )
    model.load_state_dict({k: state[k] for k in expected}, strict=False, assign=True)
    if cfg.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    # buffers were created on meta: rebuild the rotary table for real
    model.model.rotary = RotaryEmbedding(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling)
    return model.to(device=device, dtype=dtype).eval()


def save_model(model: CausalLM, path: str | Path, extra_config: dict | None = None) -> None:
    """Write config.json + model.safetensors in the family's HF layout (per-expert tensors)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    cfg = config_to_hf(model.config)
    cfg.update(extra_config or {})
    (path / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    save_file(split_experts(state, model.config), str(path / "model.safetensors"), metadata={"format": "pt"})
