"""Frozen, validated configuration objects (one config, no globals)."""

from __future__ import annotations

import functools
import math
import numbers
from dataclasses import dataclass, field

QK_NORMS = ("", "head", "proj")  # none; per head before RoPE (Qwen3); over the whole projection (OLMoE)


class ModelFileError(ValueError):
    """A model directory's file is unreadable or inconsistent (config.json, model.safetensors, tokenizer.json):
    the message names the file and what is wrong with it. A ValueError, so callers that catch bad input
    already catch it; the CLI prints it as one line and exits with status 2."""


_INT_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
               "num_key_value_heads", "head_dim", "max_position_embeddings", "num_experts", "num_experts_per_tok",
               "moe_intermediate_size", "shared_expert_intermediate_size", "decoder_sparse_step")
_POSITIVE = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
             "num_key_value_heads", "head_dim", "max_position_embeddings")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)  # True is an int to Python, not a layer count


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of a decoder (dense or Mixture-of-Experts), read from an HF config.json.

    The families that fill it from a checkpoint (Llama, Qwen2, Qwen3, Mistral, Mixtral, Qwen2-MoE,
    Qwen3-MoE, OLMoE) live in `tessera.models.families`; this class only holds and checks the numbers.
    MoE fields stay at their zero defaults for dense models (`num_experts == 0`).
    """

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
    qk_norm: str = ""  # one of QK_NORMS
    o_bias: bool = False  # bias on o_proj too (OLMoE's attention_bias)
    clip_qkv: float | None = None  # OLMoE: clamp q, k, v to [-clip, clip]
    model_type: str = "llama"
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None
    # Mixture of Experts (0 experts: a dense model)
    num_experts: int = 0
    num_experts_per_tok: int = 0
    moe_intermediate_size: int = 0  # FFN width of one routed expert
    norm_topk_prob: bool = True  # renormalise the top-k router probabilities to sum to 1
    shared_expert_intermediate_size: int = 0  # Qwen2-MoE: one always-on expert behind a sigmoid gate
    decoder_sparse_step: int = 1  # layer i is MoE iff (i + 1) % step == 0 and i not in mlp_only_layers
    mlp_only_layers: tuple[int, ...] = ()
    router_aux_loss_coef: float = 0.0  # training only (load-balancing loss, Switch Transformer)

    def __post_init__(self):
        self._check_types()
        if self.qk_norm not in QK_NORMS:
            raise ValueError(f"qk_norm must be one of {QK_NORMS}, got {self.qk_norm!r}")
        for f in _POSITIVE:  # before the modulo below: zero heads would be a ZeroDivisionError
            if getattr(self, f) <= 0:
                raise ValueError(f"{f} must be positive, got {getattr(self, f)}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads={self.num_attention_heads} is not a multiple of "
                f"num_key_value_heads={self.num_key_value_heads}"
            )
        if not self.rms_norm_eps > 0 or not self.rope_theta > 0:
            raise ValueError(f"rms_norm_eps and rope_theta must be positive, got {self.rms_norm_eps} and "
                             f"{self.rope_theta}")
        if self.num_experts:
            if not 0 < self.num_experts_per_tok <= self.num_experts:
                raise ValueError(f"num_experts_per_tok={self.num_experts_per_tok} must be in [1, num_experts="
                                 f"{self.num_experts}]")
            if self.moe_intermediate_size <= 0 or self.decoder_sparse_step <= 0:
                raise ValueError("moe_intermediate_size and decoder_sparse_step must be positive for an MoE model")
        object.__setattr__(self, "mlp_only_layers", tuple(self.mlp_only_layers))
        rs = self.rope_scaling
        if rs and rs.get("rope_type", rs.get("type")) not in (None, "default", "llama3"):
            raise ValueError(f"unsupported rope_scaling {rs!r}: only 'default' and 'llama3' are implemented")

    def _check_types(self) -> None:
        """Wrong JSON types fail here with the field's name, not later as a TypeError deep in a layer."""
        for f in _INT_FIELDS:
            if not _is_int(getattr(self, f)):
                raise ValueError(f"{f} must be an integer, got {getattr(self, f)!r}")
        for f in ("rms_norm_eps", "rope_theta", "router_aux_loss_coef"):
            if not _is_number(getattr(self, f)):
                raise ValueError(f"{f} must be a number, got {getattr(self, f)!r}")
        if self.clip_qkv is not None and not _is_number(self.clip_qkv):
            raise ValueError(f"clip_qkv must be a number or null, got {self.clip_qkv!r}")
        if self.rope_scaling is not None and not isinstance(self.rope_scaling, dict):
            raise ValueError(f"rope_scaling must be an object or null, got {self.rope_scaling!r}")
        for f in ("bos_token_id", "pad_token_id"):
            if getattr(self, f) is not None and not _is_int(getattr(self, f)):
                raise ValueError(f"{f} must be an integer or null, got {getattr(self, f)!r}")
        e = self.eos_token_id
        if e is not None and not (_is_int(e) or isinstance(e, (list, tuple)) and all(map(_is_int, e))):
            raise ValueError(f"eos_token_id must be an integer, a list of integers or null, got {e!r}")
        if not isinstance(self.mlp_only_layers, (list, tuple)) or not all(map(_is_int, self.mlp_only_layers)):
            raise ValueError(f"mlp_only_layers must be a list of layer indices, got {self.mlp_only_layers!r}")
        for f in ("tie_word_embeddings", "attention_bias", "o_bias", "norm_topk_prob"):
            if not isinstance(getattr(self, f), bool):
                raise ValueError(f"{f} must be true or false, got {getattr(self, f)!r}")

    @property
    def eos_ids(self) -> tuple[int, ...]:
        e = self.eos_token_id
        return () if e is None else tuple(e) if isinstance(e, (list, tuple)) else (e,)

    def is_moe_layer(self, i: int) -> bool:
        """Whether decoder layer i has a routed-expert FFN (the Qwen2-MoE rule; every layer for Mixtral)."""
        return bool(self.num_experts) and (i + 1) % self.decoder_sparse_step == 0 and i not in self.mlp_only_layers


def _check_int(name: str, v, lo: int | None = None, hi: int | None = None) -> None:
    """An int (not a bool, not a float that happens to be whole) in [lo, hi]: TypeError / ValueError naming it."""
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(v).__name__} {v!r}")
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        rng = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise ValueError(f"{name} must be {rng}, got {v}")


def _check_real(name: str, v) -> float:
    """A finite real number (int or float, not a bool): TypeError / ValueError naming it."""
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise TypeError(f"{name} must be a number, got {type(v).__name__} {v!r}")
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {v}")
    return float(v)


def _with_max_tokens_alias(cls):
    """Accept `max_tokens` (vLLM's and OpenAI's name) as another spelling of `max_new_tokens`.

    A wrapper around the generated __init__ rather than a second field, so that `dataclasses.replace`
    (which passes fields only) never sees two values for one setting."""
    init = cls.__init__

    @functools.wraps(init)
    def __init__(self, *args, max_tokens=None, **kw):
        if max_tokens is not None:
            _check_int("max_tokens", max_tokens, 1)
            if args or kw.get("max_new_tokens", max_tokens) != max_tokens:
                raise ValueError("give max_tokens or max_new_tokens, not both")
            kw["max_new_tokens"] = max_tokens
        init(self, *args, **kw)

    cls.__init__ = __init__
    cls.max_tokens = property(lambda self: self.max_new_tokens, doc="vLLM's name for max_new_tokens")
    return cls


@_with_max_tokens_alias
@dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens and when to stop, with vLLM's names. temperature == 0 means greedy.

    Every field is checked on construction: a wrong type raises TypeError (an int field given 2.0, a
    bool, a string), a value out of range raises ValueError; the message names the field. `max_tokens=`
    is accepted for `max_new_tokens`. Penalties follow vLLM / OpenAI: presence and frequency penalties
    in [-2, 2] act on the tokens generated so far (logit -= presence * [count > 0] + frequency * count);
    the repetition penalty (> 0, 1 = off; Keskar et al., CTRL, arXiv 1909.05858) divides positive and
    multiplies negative logits of every token in the prompt or the output. `logprobs=k` returns, for
    every generated token, its log-probability under the model and the k most likely alternatives
    (k in [0, 20]); `n` completions are generated per prompt.
    """

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0  # 0 = no top-k cut
    seed: int | None = None
    stop: tuple[str, ...] = field(default_factory=tuple)  # stop strings, matched on decoded text
    ignore_eos: bool = False
    n: int = 1  # completions per prompt
    logprobs: int | None = None  # None: no log-probabilities; k: the sampled token's and the top k
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0

    def __post_init__(self):
        _check_int("max_new_tokens", self.max_new_tokens, 1)
        for name in ("temperature", "top_p", "presence_penalty", "frequency_penalty", "repetition_penalty"):
            object.__setattr__(self, name, _check_real(name, getattr(self, name)))
        if not (self.temperature >= 0.0):
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not (0.0 < self.top_p <= 1.0):
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        _check_int("top_k", self.top_k, 0)
        if self.seed is not None:
            _check_int("seed", self.seed)
        _check_int("n", self.n, 1)
        if self.logprobs is not None:
            _check_int("logprobs", self.logprobs, 0, 20)
        for name in ("presence_penalty", "frequency_penalty"):
            if not -2.0 <= getattr(self, name) <= 2.0:
                raise ValueError(f"{name} must be in [-2, 2], got {getattr(self, name)}")
        if not self.repetition_penalty > 0.0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")
        if not isinstance(self.ignore_eos, bool):
            raise TypeError(f"ignore_eos must be a bool, got {type(self.ignore_eos).__name__} {self.ignore_eos!r}")
        stop = (self.stop,) if isinstance(self.stop, str) else self.stop
        if not isinstance(stop, (list, tuple)) or not all(isinstance(s, str) for s in stop):
            raise TypeError(f"stop must be a string or a list of strings, got {self.stop!r}")
        object.__setattr__(self, "stop", tuple(stop))
        if any(not s for s in self.stop):
            raise ValueError("stop strings must be non-empty")

    @property
    def has_penalties(self) -> bool:
        return bool(self.presence_penalty or self.frequency_penalty or self.repetition_penalty != 1.0)
