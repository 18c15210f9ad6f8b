"""How many CPU threads torch uses for the engine: the `--threads` option and `TESSERA_THREADS`.

torch starts one intra-op thread per core. Each op then splits its work across the threads and joins
them again, which pays off for large matrices but not for the small per-token ops of decoding; on a
machine whose cores are shared with other work, every join waits for the slowest, descheduled thread.
Measured on a shared 2-vCPU EPYC (benchmarks/results/threads_cpu.md), two threads ran the embedded
model's decode at 0.07-0.19x and its prefill at 0.16x the speed of one thread, so the `tessera` command
runs one thread unless told otherwise: `TESSERA_THREADS=N` (every command) or `tessera serve --threads N`
(a dedicated machine, larger models and long prompts can gain from more). Importing tessera changes
nothing: in Python, call `set_threads` (or `torch.set_num_threads`) yourself.
"""

from __future__ import annotations

import os

import torch

ENV = "TESSERA_THREADS"


def default_threads() -> int:
    """`TESSERA_THREADS` if set, else 1."""
    v = os.environ.get(ENV)
    if v is None:
        return 1
    try:
        n = int(v)
    except ValueError:
        raise ValueError(f"{ENV} must be a positive integer, got {v!r}") from None
    if n < 1:
        raise ValueError(f"{ENV} must be a positive integer, got {v!r}")
    return n


def set_threads(n: int | None = None) -> int:
    """Set torch's intra-op threads to `n` (None: `default_threads()`); returns the number set."""
    n = default_threads() if n is None else n
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"threads must be a positive integer, got {n!r}")
    torch.set_num_threads(n)
    return n
