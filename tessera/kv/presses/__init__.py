from tessera.kv.presses.base import NoPress, Press
from tessera.kv.presses.decoding import Candidates, ScorerPress
from tessera.kv.presses.h2o import H2OPress
from tessera.kv.presses.rkv import RKVPress
from tessera.kv.presses.snapkv import SnapKVPress
from tessera.kv.presses.streaming_llm import StreamingLLMPress

PRESSES: dict[str, type[Press]] = {
    "none": NoPress,
    "full": NoPress,
    "rkv": RKVPress,
    "snapkv": SnapKVPress,
    "streamingllm": StreamingLLMPress,
    "h2o": H2OPress,
}


def make_press(name: str, **kw) -> Press:
    """Build a registered press by name ('none'/'full' = no compression)."""
    if name not in PRESSES:
        raise ValueError(f"unknown press {name!r}; known: {', '.join(sorted(PRESSES))}")
    return PRESSES[name](**kw)


__all__ = [
    "PRESSES",
    "Candidates",
    "H2OPress",
    "NoPress",
    "Press",
    "RKVPress",
    "ScorerPress",
    "SnapKVPress",
    "StreamingLLMPress",
    "make_press",
]
