"""KV caches: the backend protocol (backend.py), the registry the engine builds caches from
(registry.py), the dense cache (cache.py), the interface presses act through (press_target.py),
the presses (presses/), and the sparse-decode backends (shadowkv/, quest.py).

A backend registers itself with `tessera.kv.registry.register_backend`; the built-in ones are
imported here, in one place. None of them imports this package's names, so no import order matters.
"""

from tessera.kv import cache as _dense  # noqa: F401  registers "dense"
from tessera.kv import quest as _quest  # noqa: F401  registers "quest"
from tessera.kv import shadowkv as _shadowkv  # noqa: F401  registers "shadowkv"
from tessera.kv.backend import KVCache, StepContext
from tessera.kv.cache import DenseCache
from tessera.kv.press_target import PressTarget
from tessera.kv.registry import KV_BACKENDS, check_backend_args, make_cache, register_backend

__all__ = [
    "KV_BACKENDS",
    "DenseCache",
    "KVCache",
    "PressTarget",
    "StepContext",
    "check_backend_args",
    "make_cache",
    "register_backend",
]
