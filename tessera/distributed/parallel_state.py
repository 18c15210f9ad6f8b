"""The one place that knows ranks and process groups (as Megatron-LM's `parallel_state.py`).

Everything else asks this module for `rank(group)`, `world_size(group)` and for the collective
argument check; a group is a `ProcessGroup`, `None` (the world) or a name that `initialize` gave it:

    ps.initialize(tp=2, ep=2)          # 4 ranks: "tp" = {0,1} / {2,3}, "ep" = {0,2} / {1,3}
    ps.initialize_disaggregated(attn=2, expert=2)   # roles: ranks 0-1 "attention", 2-3 "expert"
    ps.world_size("ep"), ps.rank("tp"), ps.group("expert"), ps.role()

Layout as in Megatron-LM: tensor-parallel ranks are consecutive (the fastest links), expert-parallel
groups stride over them (rank = e * tp + t), so the ranks of one EP group hold the same tensor-parallel
shard of the attention and exchange tokens with each other. Disaggregated serving (MegaScale-Infer,
arXiv 2504.02263) puts the attention ranks first and the expert ranks after them; "attn" and "expert"
are the groups of each side and `role()` says which side this rank is on.
"""

from __future__ import annotations

import datetime

import torch
import torch.distributed as dist


class DistArgumentError(ValueError):
    """Raised on *every* rank when the ranks disagree or a request cannot be honoured."""


def init_from_env(backend: str = "gloo", timeout_s: float = 60.0) -> dist.ProcessGroup:
    """Initialise the default group from torchrun's env (RANK, WORLD_SIZE, MASTER_ADDR/PORT)."""
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    return dist.group.WORLD


def init(rank: int, world: int, init_method: str, backend: str = "gloo", timeout_s: float = 30.0):
    """Explicit init, used by tests and benchmarks that spawn their own processes."""
    dist.init_process_group(
        backend, init_method=init_method, rank=rank, world_size=world,
        timeout=datetime.timedelta(seconds=timeout_s),
    )
    return dist.group.WORLD


_GROUPS: dict[str, dist.ProcessGroup] = {}
_ROLE = ["colocated"]


def _new_groups(name: str, members: list[list[int]]) -> None:
    """Every rank creates every group (torch.distributed requires it, in the same order) and keeps its own."""
    me = dist.get_rank()
    for ranks in members:
        g = dist.new_group(ranks)
        if me in ranks:
            _GROUPS[name] = g


def _check_world(want: int, what: str) -> None:
    w = dist.get_world_size()
    if w != want:
        raise DistArgumentError(f"{what} needs {want} ranks, but {w} were started")


def initialize(tp: int = 1, ep: int = 1) -> None:
    """Named groups "tp" and "ep" over the initialised world of exactly tp * ep ranks (a one-line
    DistArgumentError on every rank otherwise: every rank sees the same world size)."""
    if tp < 1 or ep < 1:
        raise DistArgumentError(f"tp and ep must be >= 1, got tp={tp} ep={ep}")
    _check_world(tp * ep, f"tp={tp} x ep={ep}")
    destroy_groups()
    _new_groups("tp", [[e * tp + t for t in range(tp)] for e in range(ep)])
    _new_groups("ep", [[e * tp + t for e in range(ep)] for t in range(tp)])
    _ROLE[0] = "colocated"


def initialize_disaggregated(attn: int, expert: int) -> None:
    """Ranks 0..attn-1 run attention ("attn" group), attn..attn+expert-1 the experts ("expert" group)."""
    if attn < 1 or expert < 1:
        raise DistArgumentError(f"disaggregation needs at least one rank per side, got attn={attn} expert={expert}")
    _check_world(attn + expert, f"attn={attn} + expert={expert}")
    destroy_groups()
    _new_groups("attn", [list(range(attn))])
    _new_groups("expert", [list(range(attn, attn + expert))])
    _ROLE[0] = "attention" if dist.get_rank() < attn else "expert"


def role() -> str:
    """ "colocated" (every rank runs whole layers), "attention" or "expert" (disaggregated)."""
    return _ROLE[0]


def group(name: str) -> dist.ProcessGroup:
    """The group this rank belongs to under `name` ("world", "tp", "ep", "attn", "expert")."""
    return _named(name)


def _named(name: str) -> dist.ProcessGroup:
    if name == "world":
        return dist.group.WORLD
    if name not in _GROUPS:
        have = ", ".join(sorted(_GROUPS)) or "none"
        raise DistArgumentError(f"no process group named {name!r} on this rank (initialised: {have}); "
                                "call parallel_state.initialize(...) first")
    return _GROUPS[name]


def destroy_groups() -> None:
    """Forget the named groups (`dist.destroy_process_group()` frees them with the world)."""
    _GROUPS.clear()
    _ROLE[0] = "colocated"


def group_or_world(group=None):
    if isinstance(group, str):
        return _named(group)
    return dist.group.WORLD if group is None else group


def rank(group=None) -> int:
    return dist.get_rank(group_or_world(group))


def world_size(group=None) -> int:
    return dist.get_world_size(group_or_world(group))


def global_rank(group, group_rank: int) -> int:
    """Translate a rank inside `group` to the default group's rank (for send/recv/broadcast src)."""
    g = group_or_world(group)
    return group_rank if g is dist.group.WORLD else dist.get_global_rank(g, group_rank)


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def broadcast_object(obj, src: int = 0, group=None):
    box = [obj]
    dist.broadcast_object_list(box, src=global_rank(group, src), group=group_or_world(group))
    return box[0]


def check_consistent(what: str, local: dict, group=None, error: str | None = None) -> None:
    """Collective: every rank contributes `local` (picklable: shapes, dtypes, sizes) and an optional
    local `error`. If any rank has an error, or the dicts differ, every rank raises the same
    DistArgumentError. This turns "rank 1 passed another shape" from a deadlock into an error.
    """
    g = group_or_world(group)
    w = dist.get_world_size(g)
    gathered: list = [None] * w
    dist.all_gather_object(gathered, (local, error), group=g)
    errs = [f"rank {r}: {e}" for r, (_, e) in enumerate(gathered) if e]
    if errs:
        raise DistArgumentError(f"{what}: " + "; ".join(errs))
    first = gathered[0][0]
    diff = [r for r, (d, _) in enumerate(gathered) if d != first]
    if diff:
        detail = ", ".join(f"rank {r}: {gathered[r][0]}" for r in [0, *diff])
        raise DistArgumentError(f"{what}: ranks disagree ({detail})")


def describe(t: torch.Tensor) -> dict:
    return {"shape": tuple(t.shape), "dtype": str(t.dtype)}

