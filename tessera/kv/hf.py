"""Use Tessera's KV presses from transformers' `generate` (Llama, Qwen2, Qwen3, Mistral families).

    from tessera.kv.hf import PressCache, generate_kwargs
    cache = PressCache(model, make_press("rkv", budget=256))
    out = model.generate(**inputs, **generate_kwargs(model, cache), max_new_tokens=2048)

    cache = PressCache(model, kv="shadowkv", kv_options={"sparse_budget": 2048})   # ShadowKV backend

How it works. HF attention modules call `cache.update(k, v, layer_idx, kwargs=...)` and then the
attention function named by `config._attn_implementation`. `PressCache` switches the model to the
attention function registered here ("tessera_kv"), whose work is done by a `DenseCache`: it
appends the new K/V, attends with per-row lengths (so evicted slots need no mask), records the
true post-RoPE queries (after Qwen3's q_norm) for R-KV/SnapKV and, after the last layer of every
forward, runs the press hooks exactly as our engine does. `update` only hands the new K/V on.

Positions: `generate` passes explicit `position_ids` (from the attention mask, then +1 per step),
so new tokens get their logical position whatever the physical cache length; `get_seq_length()`
reports the logical length too, never the physical one (evicted tokens still count). HF's decode-time
mask, sized by HF's logical bookkeeping, is ignored: after per-head eviction no 2D mask can describe
the cache.
Left padding is read from the prefill mask and the pad slots are never stored.

ShadowKV (`kv="shadowkv"`): the backend factorises *pre*-RoPE keys, but HF hands the cache post-RoPE
keys. RoPE is a rotation, so the adapter recovers the pre-RoPE keys exactly by rotating back at the
tokens' logical positions with Tessera's RotaryEmbedding built from the same config (the parity tests
pin it to HF's), and hands them to the backend before the prefill attention.

Not supported (clear errors): beam search / cache reordering, chunked prefill or a second prompt
into a used cache, sliding-window attention beyond its window, attention scalings other than
1/sqrt(head_dim).

transformers 5.0 to 5.x (`pyproject.toml` declares the range; `make compat-transformers` tests both ends in
their own environments). Across it the cache-layer interface changed: recent releases pass the attention's
forward kwargs to `cache.update(..., kwargs=...)` and name the `generate` argument `cache`; 5.0 passes only
RoPE tables to `update`, names it `past_key_values` and asks layers for `get_max_cache_shape` and for mask
sizes from a `cache_position` tensor. `_Layer` answers both spellings, and where `update` gets no kwargs
dict the layer hands its cache to the attention function through a thread-local slot that the very next
attention call of the same thread takes. `generate_kwargs(model, cache)` spells the argument.
"""

from __future__ import annotations

import inspect
import threading

import torch
from transformers.cache_utils import Cache, CacheLayerMixin
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from tessera.kv.backend import KVCache, StepContext
from tessera.kv.cache import DenseCache
from tessera.kv.presses.base import NoPress, Press
from tessera.kv.registry import make_cache
from tessera.layers.rope import RotaryEmbedding, apply_rope
from tessera.models.families import FAMILIES, config_from_hf

ATTN_NAME = "tessera_kv"
_HANDOFF = threading.local()  # transformers 5.0: update() -> the attention call right after it, same thread


def generate_kwargs(model, cache) -> dict:
    """`model.generate(**inputs, **generate_kwargs(model, cache))`: the cache under the name this transformers
    release uses (`cache` in recent releases, `past_key_values` in 5.0)."""
    return {"cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values": cache}


class _Layer(CacheLayerMixin):
    """One HF cache layer: hands the new K/V to the attention function, holds nothing itself."""

    is_sliding = False

    def __init__(self, owner: PressCache, idx: int):
        super().__init__()
        self.owner, self.idx = owner, idx

    def lazy_initialization(self, key_states, value_states) -> None:
        self.is_initialized = True

    def update(self, key_states, value_states, *args, **kwargs):
        if self.owner._pending is not None:
            raise RuntimeError("PressCache: a layer's K/V were never attended: the model does not run the "
                               f"{ATTN_NAME!r} attention (pass the cache to the model it was built for)")
        fwd = kwargs.get("kwargs")
        if isinstance(fwd, dict):
            # The attention module passes this same dict on to the attention function: that is how
            # `_attention` learns which cache and layer the K/V belong to (no global state).
            fwd["press_cache"] = self.owner
        else:  # transformers 5.0: update(k, v, cache_kwargs) gets only RoPE tables, the attention call follows
            _HANDOFF.owner = self.owner
        self.lazy_initialization(key_states, value_states)
        self.keys, self.values = key_states, value_states  # the newest K/V only (HF introspection)
        self.owner._pending = self.idx
        return key_states, value_states

    def get_mask_sizes(self, query_length, *args) -> tuple[int, int]:
        # recent releases pass the query length; 5.0 passes the cache_position tensor [S]
        q = query_length if isinstance(query_length, int) else int(query_length.shape[0])
        return self.owner.seen + q, 0

    def get_seq_length(self) -> int:
        return self.owner.seen

    def get_max_length(self) -> int:
        return -1

    get_max_cache_shape = get_max_length  # its name in transformers 5.0


class PressCache(Cache):
    """An HF `Cache` backed by a Tessera KV backend (`kv`: "dense", driven by a press, or "shadowkv" with
    `kv_options`). One per `generate` call."""

    def __init__(self, model, press: Press | None = None, kv: str = "dense", kv_options: dict | None = None):
        cfg = model.config.get_text_config(decoder=True)
        if getattr(cfg, "model_type", None) not in FAMILIES:
            raise ValueError(f"PressCache supports {', '.join(sorted(FAMILIES))} models, not {cfg.model_type!r}")
        self.press = press or NoPress()
        self.press.validate(cfg.max_position_embeddings)
        self.kv, self.kv_options = kv, dict(kv_options or {})
        self._cfg = None  # our config, for the other backends only (the dense path takes any RoPE scaling)
        if kv != "dense":  # build one now so that bad options or a press that does not compose fail here
            self._cfg = config_from_hf(cfg.to_dict())
            make_cache(kv, self._cfg, 1, torch.float32, "cpu", self.press, **self.kv_options)
        self._rope: RotaryEmbedding | None = None
        self.num_layers = cfg.num_hidden_layers
        self.n_kv = cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.dense: KVCache | None = None  # the backend (named `dense` for the default case)
        self.seen = 0  # logical tokens fed so far (pads included, as HF counts them)
        self._pending = None
        self._ctx: StepContext | None = None
        self._order = None  # prefill: per-row permutation moving left padding to the right
        self.decoded = None  # [B] decoded tokens per row
        super().__init__(layers=[_Layer(self, i) for i in range(self.num_layers)])
        register()
        if model.config._attn_implementation != ATTN_NAME:
            model.set_attn_implementation(ATTN_NAME)

    def nbytes(self) -> int:
        return self.dense.nbytes() if self.dense is not None else 0

    def physical_length(self) -> int:
        """Slots the longest row holds now (<= budget + buffer once a press compresses); dense backend only."""
        if self.dense is not None and not isinstance(self.dense, DenseCache):
            raise NotImplementedError(f"physical_length is defined for the dense backend, not {self.kv!r}")
        return int(self.dense.lengths(0).max()) if self.dense is not None else 0

    def reorder_cache(self, beam_idx):
        raise NotImplementedError("PressCache does not support beam search")

    def batch_select_indices(self, indices):
        raise NotImplementedError("PressCache does not support batch reordering")

    def crop(self, tokens_to_remove: int):
        raise NotImplementedError("PressCache cannot be cropped (assisted decoding is not supported)")

    # ---- called from the attention function --------------------------------------------------
    def _attend(self, layer, q, k, v, mask, position_ids) -> torch.Tensor:  # -> [B, Hq, S, D]
        _, Hq, S, D = q.shape
        if layer == 0:
            self._begin_step(q, k, mask, position_ids)
        if self._order is not None:  # left padding -> right padding, as DenseCache expects
            g = self._order[:, None, :, None]
            q, k, v = (t.gather(2, g.expand(-1, t.shape[1], -1, D)) for t in (q, k, v))
        if self._ctx.is_prefill and self.dense.wants_pre_rope_keys:
            cos, sin = self._rope.to(k.device).cos_sin(self._ctx.positions, torch.float32)
            k_pre = apply_rope(k.float(), cos, -sin).to(k.dtype)  # rotate back: RoPE is orthogonal
            self.dense.observe_pre_rope_keys(layer, k_pre, self._ctx)
        out = self.dense.attend(layer, q, k, v, self._ctx)
        if self._order is not None:
            out = out.scatter(2, self._order[:, None, :, None].expand(-1, Hq, -1, D), out.clone())
        if layer == self.num_layers - 1:
            self._end_step(S)
        return out

    def _begin_step(self, q, k, mask, position_ids) -> None:
        B, _, S, D = q.shape
        dev = q.device
        prefill = self.dense is None
        if prefill:
            if self.kv == "dense":
                self.dense = DenseCache(self.num_layers, B, self.n_kv, D, k.dtype, dev)
                self.press.prepare(self.dense)  # the press asks for the optional state it reads
            else:
                self.dense = make_cache(self.kv, self._cfg, B, k.dtype, dev, self.press, **self.kv_options)
                self._rope = RotaryEmbedding(self._cfg.head_dim, self._cfg.rope_theta, self._cfg.rope_scaling)
            self.decoded = torch.zeros(B, dtype=torch.long, device=dev)
            # which prompt tokens are real: the last query row of a (left-padded) causal mask
            real = torch.ones(B, S, dtype=torch.bool, device=dev) if mask is None else mask[:, 0, -1, -S:].bool()
            lens = real.sum(1)
            self._order = None if bool(real.all()) else torch.argsort((~real).to(torch.int8), dim=1, stable=True)
            pos = torch.arange(S, device=dev).expand(B, S)  # logical positions of the real tokens
            self._ctx = StepContext(positions=pos, new_lens=lens, is_prefill=True)
        else:
            if S != 1:
                raise NotImplementedError("PressCache: only one prompt per cache and one token per decode step")
            if position_ids is None:
                if not isinstance(self.dense, DenseCache):
                    raise NotImplementedError(f"PressCache({self.kv!r}) needs the position_ids that generate passes")
                position_ids = self.dense.pos[0].amax((1, 2)).long()[:, None] + 1
            self._order = None
            self._ctx = StepContext(positions=position_ids.to(dev).view(B, 1).long(),
                                    new_lens=torch.ones(B, dtype=torch.long, device=dev), is_prefill=False)

    def _end_step(self, S: int) -> None:
        self.seen += S
        if self._ctx.is_prefill:
            self.press.after_prefill(self.dense, self.decoded)
        else:
            self.decoded = self.decoded + 1
            self.press.after_decode(self.dense, self.decoded)


def _attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, press_cache=None, **kwargs):
    """The registered attention function: [B, Hq, S, D] in, [B, S, Hq, D] out (as HF expects)."""
    owner = press_cache
    if owner is None:  # transformers 5.0: the layer's update() just left it here
        owner, _HANDOFF.owner = getattr(_HANDOFF, "owner", None), None
    if owner is None:  # not a PressCache forward (e.g. use_cache=False): plain SDPA
        return ALL_ATTENTION_FUNCTIONS["sdpa"](module, query, key, value, attention_mask, scaling=scaling,
                                              dropout=dropout, **kwargs)
    layer, owner._pending = owner._pending, None
    D = query.shape[-1]
    if scaling is not None and abs(scaling - D**-0.5) > 1e-6:
        raise NotImplementedError(f"PressCache: attention scaling {scaling} != 1/sqrt(head_dim)")
    sw = kwargs.get("sliding_window")
    if sw is not None and owner.seen + query.shape[2] > sw:
        raise NotImplementedError("PressCache: sliding-window attention beyond its window is not supported")
    out = owner._attend(layer, query, key, value, attention_mask, kwargs.get("position_ids"))
    return out.transpose(1, 2).contiguous(), None


def register() -> None:
    """Register the attention and mask functions under "tessera_kv" (explicit, idempotent)."""
    ALL_ATTENTION_FUNCTIONS.register(ATTN_NAME, _attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(ATTN_NAME, sdpa_mask)
