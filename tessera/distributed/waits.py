"""Host side of the device-side waits in `lang`: how many polls a timeout is, and the error a
kernel's expired wait becomes on the host.

`lang.wait` spins at most `max_spins` polls; `spins_for` converts seconds into polls by timing a
spin once per device type. On expiry a wait records (signal address, awaited, seen) in the rank's
error slot; `raise_on_wait_error` turns that record into a `DistTimeoutError` naming the rank, the
signal and the values, so a missing peer is an error, never a hang.
"""

from __future__ import annotations

import os
import time

import torch
import triton

from tessera.distributed.lang import wait


class DistTimeoutError(RuntimeError):
    """A wait expired: a protocol bug, a crashed peer or a peer that never called the op."""


NO_TIMEOUT = 2**62
_SPIN_RATE: dict[str, float] = {}


def interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@triton.jit
def _spin_kernel(buf, max_spins):
    wait(buf, 1, max_spins, buf + 1)


def spins_for(timeout_s: float | None, device: torch.device) -> int:
    """Polls that take about `timeout_s` on this device (measured once per device type)."""
    if timeout_s is None:
        return NO_TIMEOUT
    key = device.type
    if key not in _SPIN_RATE:
        n = 200 if interpreted() or key == "cpu" else 200_000
        buf = torch.zeros(5, dtype=torch.int64, device=device)
        _spin_kernel[(1,)](buf, n)  # warm-up (compile)
        buf.zero_()
        t0 = time.perf_counter()
        _spin_kernel[(1,)](buf, n)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        _SPIN_RATE[key] = n / max(time.perf_counter() - t0, 1e-9)
    return max(1, int(timeout_s * _SPIN_RATE[key]))


def raise_on_wait_error(heap, timeout_s: float | None, op: str) -> None:
    """Check (and clear) the error slots of the ranks this process hosts."""
    ranks = range(heap.world) if heap.virtual else [heap.rank]
    for r in ranks:
        e = heap.peer(heap.err, r) if heap.virtual else heap.err
        if e.device.type == "cuda":
            torch.cuda.synchronize(e.device)
        flag, addr, want, seen = e.tolist()
        if flag:
            e.zero_()
            raise DistTimeoutError(
                f"{op}: rank {r} timed out after ~{timeout_s}s waiting on {heap.describe_addr(addr)} "
                f"for value >= {want} (last seen {seen}); a peer did not notify it: protocol bug, "
                f"crashed rank, or a rank that did not call {op} with matching arguments"
            )
