"""The one place that knows ranks and process groups (as Megatron-LM's `parallel_state.py`).

Everything else asks this module for `rank(group)`, `world_size(group)` and for the collective
argument check, so that a later switch (torchrun env, sub-groups for TP x EP, virtual ranks on
one GPU) changes one file.
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


def group_or_world(group=None):
    return dist.group.WORLD if group is None else group


def rank(group=None) -> int:
    return dist.get_rank(group_or_world(group))


def world_size(group=None) -> int:
    return dist.get_world_size(group_or_world(group))


def global_rank(group, group_rank: int) -> int:
    """Translate a rank inside `group` to the default group's rank (for send/recv/broadcast src)."""
    g = group_or_world(group)
    return group_rank if g is dist.group.WORLD else dist.get_global_rank(g, group_rank)


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

