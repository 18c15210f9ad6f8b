"""KV-compression presses, one method per file, reachable by name through the registry.

Adding a press: see docs/kv_compression.md ("Adding a press"). The built-in presses are imported
here, in one place, so that importing this package registers all of them.
"""

from tessera.kv.presses.base import NoPress, Press
from tessera.kv.presses.h2o import H2OPress
from tessera.kv.presses.registry import PRESSES, make_press, register_press
from tessera.kv.presses.rkv import PublishedRKVPress, RKVPress
from tessera.kv.presses.rkv_h2o import RKVH2OPress
from tessera.kv.presses.rkv_snapkv import RKVSnapKVPress
from tessera.kv.presses.scorer import Candidates, ScorerPress
from tessera.kv.presses.snapkv import SnapKVPress
from tessera.kv.presses.streaming_llm import StreamingLLMPress

__all__ = [
    "PRESSES",
    "Candidates",
    "H2OPress",
    "NoPress",
    "Press",
    "PublishedRKVPress",
    "RKVH2OPress",
    "RKVPress",
    "RKVSnapKVPress",
    "ScorerPress",
    "SnapKVPress",
    "StreamingLLMPress",
    "make_press",
    "register_press",
]
