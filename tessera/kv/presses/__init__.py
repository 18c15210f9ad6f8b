from tessera.kv.presses.base import NoPress, Press

PRESSES: dict[str, type[Press]] = {"none": NoPress, "full": NoPress}


def make_press(name: str, **kw) -> Press:
    """Build a registered press by name ('none'/'full' = no compression)."""
    if name not in PRESSES:
        raise ValueError(f"unknown press {name!r}; known: {', '.join(sorted(PRESSES))}")
    return PRESSES[name](**kw)


__all__ = ["Press", "NoPress", "PRESSES", "make_press"]
