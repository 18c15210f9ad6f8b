"""The KV-backend registry: the engine builds its cache through `make_cache(name, ...)`.

A backend module registers a factory with `@register_backend(name)` and imports this module only, never
the `tessera.kv` package, so registration does not depend on import order. The built-in backends are
imported in one place, `tessera/kv/__init__.py`. A method that only evicts tokens is a press
(tessera.kv.presses), not a backend.
"""

from __future__ import annotations

from collections.abc import Callable

from tessera.kv.backend import KVCache

#: name -> factory(model_config, batch, dtype, device, press, **options) -> KVCache
KV_BACKENDS: dict[str, Callable[..., KVCache]] = {}


def register_backend(name: str):
    def deco(factory):
        if name in KV_BACKENDS and KV_BACKENDS[name] is not factory:
            raise ValueError(f"KV backend {name!r} is already registered")
        KV_BACKENDS[name] = factory
        return factory

    return deco


def check_backend_args(name: str, press, options: dict, known: set[str]) -> None:
    """For backends that decide what is attended themselves: no acting press on top, only known options."""
    if press is not None and press.acts_on_cache:
        raise ValueError(f"the {name} backend does not compose with the press {type(press).__name__}")
    if set(options) - known:
        raise ValueError(f"unknown {name} options {sorted(set(options) - known)}; known: {sorted(known)}")


def make_cache(name: str, cfg, batch: int, dtype, device, press, **options) -> KVCache:
    """A `name` backend for `batch` sequences of the model `cfg`, ready for `press` (None: no press)."""
    if name not in KV_BACKENDS:
        raise ValueError(f"unknown KV backend {name!r}; known: {', '.join(sorted(KV_BACKENDS))}")
    return KV_BACKENDS[name](cfg, batch, dtype, device, press, **options)
