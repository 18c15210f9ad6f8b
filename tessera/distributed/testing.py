"""Test- and benchmark-only: a pool of real rank processes (gloo) for tests and benchmarks (nothing in the
package imports it; tests/test_layering.py checks).

Starting a process that imports torch and triton costs seconds on a 2-core machine, so a pool is
started once per world size and reused: `pool.run(fn, *args)` runs the module-level function
`fn(*args)` on every rank and returns the per-rank results, or raises `RankFailure` with every
rank's traceback. Every wait on the pool is bounded; a pool that missed a deadline is killed
(never left hanging) and restarted on next use. Pattern after Triton-distributed's
`test/ascend/conftest.py` (mp.spawn + an error queue), written for gloo on CPU.
"""

from __future__ import annotations

import atexit
import multiprocessing as mp
import os
import queue
import tempfile
import time
import traceback


class RankFailure(RuntimeError):
    def __init__(self, errors: dict[int, str]):
        self.errors = errors
        super().__init__("\n".join(f"--- rank {r} ---\n{e}" for r, e in sorted(errors.items())))


def _worker(rank: int, world: int, init_file: str, inbox, outbox, gloo_timeout_s: float):
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported in this process
    from tessera.distributed import parallel_state as ps

    ps.init(rank, world, f"file://{init_file}", timeout_s=gloo_timeout_s)
    while True:
        job = inbox.get()
        if job is None:
            break
        fn, args = job
        try:
            outbox.put((rank, True, fn(*args)))
        except BaseException as e:  # noqa: BLE001 - report everything to the parent
            outbox.put((rank, False, f"{type(e).__name__}: {e}\n{traceback.format_exc()}"))


class RankPool:
    def __init__(self, world: int, gloo_timeout_s: float = 20.0):
        self.world, self.gloo_timeout_s, self.procs = world, gloo_timeout_s, []

    def start(self):
        ctx = mp.get_context("spawn")
        fd, self._init_file = tempfile.mkstemp(prefix="tessera_pg_")
        os.close(fd)
        os.unlink(self._init_file)  # FileStore wants to create it
        self.outbox = ctx.Queue()
        self.inboxes = [ctx.Queue() for _ in range(self.world)]
        self.procs = [
            ctx.Process(target=_worker, daemon=True,
                        args=(r, self.world, self._init_file, self.inboxes[r], self.outbox, self.gloo_timeout_s))
            for r in range(self.world)
        ]
        for p in self.procs:
            p.start()

    def run(self, fn, *args, timeout: float = 120.0) -> list:
        if not self.procs or not all(p.is_alive() for p in self.procs):
            self.stop()
            self.start()
        for q in self.inboxes:
            q.put((fn, args))
        results, errors = {}, {}
        deadline, dead_since = time.monotonic() + timeout, None
        while len(results) + len(errors) < self.world:
            try:
                r, ok, val = self.outbox.get(timeout=0.2)
                (results if ok else errors)[r] = val
                continue
            except queue.Empty:
                pass
            answered = set(results) | set(errors)
            dead = [r for r, p in enumerate(self.procs) if not p.is_alive() and r not in answered]
            dead_since = (dead_since or time.monotonic()) if dead else None
            if dead and time.monotonic() - dead_since > 1.0:  # grace for answers still in the pipe
                errors.update({r: f"process died (exit code {self.procs[r].exitcode})" for r in dead})
            if time.monotonic() > deadline:
                errors.update({r: f"no answer within {timeout}s (killed)"
                               for r in range(self.world) if r not in answered})
        if errors and (time.monotonic() > deadline or any(not p.is_alive() for p in self.procs)):
            self.stop()
        if errors:
            raise RankFailure(errors)
        return [results[r] for r in range(self.world)]

    def stop(self):
        for q in getattr(self, "inboxes", []):
            try:
                q.put(None)
            except (ValueError, OSError):
                pass
        for p in self.procs:
            p.join(timeout=3)
            if p.is_alive():
                p.kill()
                p.join(timeout=3)
        self.procs = []
        if getattr(self, "_init_file", None) and os.path.exists(self._init_file):
            os.unlink(self._init_file)


_SHARED: dict[int, RankPool] = {}


def shared_pool(world: int, gloo_timeout_s: float = 20.0) -> RankPool:
    """One pool per world size for the whole pytest session (startup dominates small tests on a
    loaded 2-core machine); stopped at exit. `run` restarts it if a test killed it."""
    if world not in _SHARED:
        _SHARED[world] = RankPool(world, gloo_timeout_s)
    return _SHARED[world]


@atexit.register
def _stop_shared():
    for p in _SHARED.values():
        p.stop()
