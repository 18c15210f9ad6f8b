"""The press registry: `@register_press(name)` on a press class makes it reachable by name from
`make_press`, the CLI and the shared tests (which parametrize over `PRESSES`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tessera.kv.presses.base import Press

#: name -> press class; one class may have several names ("none" and "full" are both NoPress)
PRESSES: dict[str, type[Press]] = {}


def register_press(*names: str):
    """Class decorator: register a press under `names`."""

    def deco(cls):
        for name in names:
            if name in PRESSES and PRESSES[name] is not cls:
                raise ValueError(f"press name {name!r} is taken by {PRESSES[name].__name__}")
            PRESSES[name] = cls
        return cls

    return deco


def make_press(name: str, **kw) -> Press:
    """Build a registered press by name ('none'/'full' = no compression)."""
    if name not in PRESSES:
        raise ValueError(f"unknown press {name!r}; known: {', '.join(sorted(PRESSES))}")
    return PRESSES[name](**kw)
