"""Frozen, validated configuration objects (one config, no globals)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

#: HF `model_type`s whose decoder our dense Llama-family model reproduces exactly.
SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "mistral", "qwen3")


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of a Llama/Qwen2/Mistral/Qwen3-family decoder, read from an HF config.json."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    max_position_embeddings: int = 4096
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None  # {"rope_type": "llama3", "factor", "low_freq_factor", ...}
    tie_word_embeddings: bool = False
    attention_bias: bool = False  # bias on q, k, v (Qwen2 sets it)
    qk_norm: bool = False  # Qwen3: RMSNorm on each head of q and k before RoPE
    model_type: str = "llama"
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None

    def __post_init__(self):
        if self.model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(
                f"unsupported architecture model_type={self.model_type!r}; "
                f"tessera's dense decoder supports {', '.join(SUPPORTED_MODEL_TYPES)}"
            )
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads={self.num_attention_heads} is not a multiple of "
                f"num_key_value_heads={self.num_key_value_heads}"
            )
        for f in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "head_dim"):
            if getattr(self, f) <= 0:
                raise ValueError(f"{f} must be positive, got {getattr(self, f)}")
        rs = self.rope_scaling
        if rs and rs.get("rope_type", rs.get("type")) not in (None, "default", "llama3"):
            raise ValueError(f"unsupported rope_scaling {rs!r}: only 'default' and 'llama3' are implemented")

    @property
    def eos_ids(self) -> tuple[int, ...]:
        e = self.eos_token_id
        return () if e is None else tuple(e) if isinstance(e, (list, tuple)) else (e,)

    @classmethod
    def from_hf(cls, d: dict) -> ModelConfig:
        """Build from the dict of a Hugging Face config.json."""
        model_type = d.get("model_type", "llama")
        if "architectures" in d and model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(f"unsupported architecture {d['architectures']} (model_type={model_type!r})")
        heads = d["num_attention_heads"]
        head_dim = d.get("head_dim") or d["hidden_size"] // heads
        bias = d.get("attention_bias", model_type == "qwen2")
        rs = d.get("rope_scaling") or None
        theta = d.get("rope_theta")
        rp = d.get("rope_parameters")  # transformers >= 5 keeps theta and scaling here
        if isinstance(rp, dict):
            theta = rp.get("rope_theta", theta)
            if rp.get("rope_type", "default") != "default":
                rs = rp
        known = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in known}
        kw.update(
            head_dim=head_dim,
            num_key_value_heads=d.get("num_key_value_heads") or heads,
            attention_bias=bias,
            qk_norm=model_type == "qwen3",
            rope_theta=float(theta or 10000.0),
            rope_scaling=rs,
            model_type=model_type,
        )
        return cls(**kw)


@dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens and when to stop. temperature == 0 means greedy."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0  # 0 = no top-k cut
    seed: int | None = None
    stop: tuple[str, ...] = field(default_factory=tuple)  # stop strings, matched on decoded text
    ignore_eos: bool = False

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not (self.temperature >= 0.0):
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not (0.0 < self.top_p <= 1.0):
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        if any(not s for s in self.stop):
            raise ValueError("stop strings must be non-empty")
