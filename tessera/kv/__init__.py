"""KV-cache backends. The engine builds its cache through `make_cache(name, ...)`; a backend that
changes where K/V live (ShadowKV) registers itself here, a method that only evicts is a press."""

from __future__ import annotations

from collections.abc import Callable

from tessera.kv.cache import DenseCache, KVCache

#: name -> factory(model_config, batch, dtype, device, press, **options) -> KVCache
KV_BACKENDS: dict[str, Callable[..., KVCache]] = {}


def register_backend(name: str):
    def deco(factory):
        KV_BACKENDS[name] = factory
        return factory

    return deco


@register_backend("dense")
def _dense(cfg, batch, dtype, device, press, **options) -> KVCache:
    if options:
        raise ValueError(f"the dense KV backend takes no options, got {sorted(options)}")
    return DenseCache(cfg.num_hidden_layers, batch, cfg.num_key_value_heads, cfg.head_dim, dtype, device,
                      query_window=press.query_window, track_attention=press.needs_attention)


def check_backend_args(name: str, press, options: dict, known: set[str]) -> None:
    """For backends that decide what is attended themselves: no press on top, only known options."""
    from tessera.kv.presses import NoPress

    if press is not None and not isinstance(press, NoPress):
        raise ValueError(f"the {name} backend does not compose with the press {type(press).__name__}")
    if set(options) - known:
        raise ValueError(f"unknown {name} options {sorted(set(options) - known)}; known: {sorted(known)}")


def make_cache(name: str, cfg, batch: int, dtype, device, press, **options) -> KVCache:
    if name not in KV_BACKENDS:
        raise ValueError(f"unknown KV backend {name!r}; known: {', '.join(sorted(KV_BACKENDS))}")
    return KV_BACKENDS[name](cfg, batch, dtype, device, press, **options)


# Backends in subpackages register themselves on import (after register_backend exists).
from tessera.kv import quest as _quest  # noqa: E402, F401
from tessera.kv import shadowkv as _shadowkv  # noqa: E402, F401
