"""Symmetric heap: every rank owns a same-sized heap with the same layout and can address its
peers' copies through a table of base addresses (NVSHMEM's symmetric heap; Iris's `heap_bases`,
ROCm/iris `iris/iris.py`; arXiv 2504.19442 §3).

Providers, one host API (`tensor`, `bases`, `barrier`, `close`):
- `SymmetricHeap` on CPU: one /dev/shm file per rank, mapped by every rank. Every rank unlinks every
  rank's file as soon as all have mapped them, and on any error in the setup (a peer killed at any step
  makes the next barrier fail), so a survivor removes the files of a peer that died before it could;
  atexit covers a survivor that exits without the error path. Nothing is left behind however the
  processes end (tests/test_reliability_dist.py kills a rank at each step of `SETUP_STEPS`).
- `SymmetricHeap` on CUDA: torch symmetric memory (`symm_mem.empty` + `rendezvous`) when present.
- `VirtualHeap`: R heaps carved from one allocation in one process ("virtual ranks"), used by the
  single-GPU check and by CPU tests of that mode; kernels then take the rank from a grid axis.
"""

from __future__ import annotations

import atexit
import os
import uuid
from dataclasses import dataclass

import torch
import torch.distributed as dist

from tessera.distributed import parallel_state as ps

ALIGN = 128  # bytes; keeps every tensor aligned for vector loads and 8-byte signal atomics
_LIVE: set[str] = set()  # /dev/shm paths this process created and has not unlinked yet


def _unlink_all():
    for p in list(_LIVE):
        _unlink(p)


def _unlink(path: str):
    _LIVE.discard(path)
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


atexit.register(_unlink_all)

#: the steps of the CPU heap's setup, in order (`_setup_step` is called on entering each)
SETUP_STEPS = ("check", "tag", "create", "created", "map", "mapped", "unlink")


def _setup_step(step: str) -> None:
    """Nothing: the point where tests kill a rank to prove the setup leaves no file behind."""


@dataclass(frozen=True)
class Allocation:
    name: str
    offset: int  # bytes from the heap base
    nbytes: int
    shape: tuple
    dtype: torch.dtype


class _Heap:
    """Bump allocator over the local heap (identical on every rank because requests are)."""

    virtual = False

    def _init_alloc(self, nbytes: int):
        # lang.symm_at tells the compiler that a peer's copy is as aligned as ours (16 bytes)
        if any(m.data_ptr() % 16 for m in self._maps):
            raise RuntimeError(f"symmetric heap bases must be 16-byte aligned: {[m.data_ptr() for m in self._maps]}")
        self.nbytes, self.used, self.allocs = nbytes, 0, []
        self.err = self._alloc((4,), torch.int64, "wait_error")  # [flag, signal addr, awaited, seen]

    def _alloc(self, shape, dtype, name) -> torch.Tensor:
        shape = tuple(int(s) for s in shape)
        n = torch.Size(shape).numel() * torch.empty((), dtype=dtype).element_size()
        off = -(-self.used // ALIGN) * ALIGN
        if off + n > self.nbytes:
            raise ps.DistArgumentError(
                f"symmetric heap too small: {name!r} needs {n} bytes at offset {off}, "
                f"heap has {self.nbytes} (used {self.used}); create the heap with nbytes >= {off + n}"
            )
        self.used = off + n
        self.allocs.append(Allocation(name, off, n, shape, dtype))
        t = self.local[off: off + n].view(dtype).view(shape)
        t.zero_()
        return t

    def offset_of(self, t: torch.Tensor) -> int:
        return t.data_ptr() - self.local.data_ptr()

    def describe_addr(self, addr: int) -> str:
        """Name the heap object at a device address (used to explain a timed-out wait)."""
        for r, base in enumerate(self.bases.tolist()):
            off = addr - base
            if 0 <= off < self.nbytes:
                for a in self.allocs:
                    if a.offset <= off < a.offset + a.nbytes:
                        idx = (off - a.offset) // torch.empty((), dtype=a.dtype).element_size()
                        return f"{a.name}[{idx}] on rank {r}'s heap"
        return f"address {addr:#x} (outside the heap)"


class SymmetricHeap(_Heap):
    """`heap = SymmetricHeap(nbytes, group)`; collective, like every allocation on it."""

    def __init__(self, nbytes: int, group=None, device: str | torch.device = "cpu"):
        self.group = ps.group_or_world(group)
        self.rank, self.world = ps.rank(group), ps.world_size(group)
        self.device = torch.device(device)
        if self.device.type == "cpu":
            _setup_step("check")
        ps.check_consistent("SymmetricHeap", {"nbytes": int(nbytes), "device": self.device.type}, group)
        self._maps: list[torch.Tensor] = []
        if self.device.type == "cpu":
            self._open_shm(int(nbytes))
        else:
            self._open_cuda(int(nbytes))
        self.local = self._maps[self.rank]
        self.bases = torch.tensor([m.data_ptr() for m in self._maps], dtype=torch.int64, device=self.device)
        self._init_alloc(int(nbytes))
        self.barrier()  # the zeroed error slot is visible before any kernel runs

    def _open_shm(self, nbytes: int):
        _setup_step("tag")
        tag = ps.broadcast_object(uuid.uuid4().hex[:12], 0, self.group)
        paths = [f"/dev/shm/tessera_{tag}_{r}" for r in range(self.world)]
        mine = paths[self.rank]
        # every rank's file, not only ours: a peer killed before it unlinks its own leaves it to us
        _LIVE.update(paths)
        try:
            self._maps = [None] * self.world
            _setup_step("create")
            self._maps[self.rank] = torch.from_file(mine, shared=True, size=nbytes, dtype=torch.uint8)
            _setup_step("created")
            dist.barrier(self.group)  # every file exists
            _setup_step("map")
            for r, p in enumerate(paths):
                if r != self.rank:
                    self._maps[r] = torch.from_file(p, shared=True, size=nbytes, dtype=torch.uint8)
            _setup_step("mapped")
            dist.barrier(self.group)  # every rank has mapped every file
            _setup_step("unlink")
        finally:
            # mappings outlive the names: after the second barrier nothing can leak; before it (a peer died
            # or failed, so a barrier raised) no rank can complete the setup, so every file may go
            for p in paths:
                _unlink(p)

    def _open_cuda(self, nbytes: int):
        try:
            import torch.distributed._symmetric_memory as symm_mem
        except ImportError as e:  # pragma: no cover - GPU only
            raise RuntimeError("CUDA symmetric heap needs torch.distributed._symmetric_memory") from e
        buf = symm_mem.empty(nbytes, dtype=torch.uint8, device=self.device)
        hdl = symm_mem.rendezvous(buf, self.group)
        self._hdl = hdl
        self._maps = [hdl.get_buffer(r, (nbytes,), torch.uint8) for r in range(self.world)]

    def tensor(self, shape, dtype, name: str = "tensor") -> torch.Tensor:
        """Collective: allocate the same object on every rank; errors (disagreement, heap too
        small) are raised on every rank."""
        err = None
        try:
            out = self._alloc(shape, dtype, name)
        except ps.DistArgumentError as e:
            out, err = None, str(e)
        ps.check_consistent(f"SymmetricHeap.tensor({name})", {"shape": tuple(shape), "dtype": str(dtype)},
                            self.group, err)
        return out

    def peer(self, t: torch.Tensor, r: int) -> torch.Tensor:
        """Host view of rank r's copy of heap tensor t."""
        off = self.offset_of(t)
        n = t.numel() * t.element_size()
        return self._maps[r][off: off + n].view(t.dtype).view(t.shape)

    def barrier(self, error: str | None = None, what: str = "barrier", agree: int = 0):
        """Barrier that also agrees on errors: a rank passing its local `error` (e.g. a bad shape)
        makes every rank raise, for the price of a barrier (one small all-reduce), instead of
        leaving its peers in a wait. `agree` is a value every rank must pass equal (a size)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        dev = self.device if dist.get_backend(self.group) == "nccl" else "cpu"
        slots = torch.zeros(2, self.world, dtype=torch.int64, device=dev)  # [errors; agreed values]
        slots[0, self.rank], slots[1, self.rank] = int(error is not None), agree
        dist.all_reduce(slots, group=self.group)
        flags, values = slots.tolist()
        _raise_if_flagged(flags, error, what)
        if len(set(values)) > 1:
            raise ps.DistArgumentError(f"{what}: ranks disagree on the size of the call: {values}")

    def close(self):
        self._maps, self.local, self.allocs = [], None, []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class VirtualHeap(_Heap):
    """R heaps carved from one allocation, in one process. `tensor()` returns rank 0's copy;
    kernels reach rank r's copy through the base table (the rank comes from a grid axis)."""

    virtual = True

    def __init__(self, nbytes: int, world: int, device: str | torch.device = "cpu"):
        self.rank, self.world, self.device, self.group = 0, world, torch.device(device), None
        stride = -(-int(nbytes) // ALIGN) * ALIGN
        self._buf = torch.zeros(world, stride, dtype=torch.uint8, device=self.device)
        self._maps = [self._buf[r, :nbytes] for r in range(world)]
        self.local = self._maps[0]
        self.bases = torch.tensor([m.data_ptr() for m in self._maps], dtype=torch.int64, device=self.device)
        self._init_alloc(int(nbytes))

    def tensor(self, shape, dtype, name: str = "tensor") -> torch.Tensor:
        t = self._alloc(shape, dtype, name)
        for r in range(1, self.world):
            self.peer(t, r).zero_()
        return t

    peer = SymmetricHeap.peer

    def barrier(self, error: str | None = None, what: str = "barrier", agree: int = 0):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        _raise_if_flagged([error is not None], error, what)

    def close(self):
        self._maps, self.local, self._buf = [], None, None


def _raise_if_flagged(flags: list, error: str | None, what: str) -> None:
    bad = [r for r, f in enumerate(flags) if f]
    if bad:
        raise ps.DistArgumentError(f"{what}: invalid arguments on rank(s) {bad}" + (f"; here: {error}" if error else ""))
