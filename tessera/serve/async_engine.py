"""The step engine behind an asyncio server: one thread steps, the event loop submits and aborts.

The engine is not thread-safe, so only its own thread touches it: handlers build and check a request
(`StepEngine.make_request` reads but never changes the engine) and hand it over through a queue, as
they hand over aborts. Each step's outputs go back to the waiting handlers' asyncio queues through
`call_soon_threadsafe`. Times are taken here, from submission, so time to first token includes queueing.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from dataclasses import dataclass

from tessera.engine.outputs import RequestOutput
from tessera.engine.request import Request
from tessera.engine.step_engine import StepEngine


class EngineDead(RuntimeError):
    pass


@dataclass
class _Stream:
    loop: asyncio.AbstractEventLoop
    q: asyncio.Queue
    submitted: float
    first: float | None = None


class AsyncEngine:
    def __init__(self, engine: StepEngine, metrics=None, idle_wait_s: float = 0.05):
        self.engine, self.metrics, self.idle_wait_s = engine, metrics, idle_wait_s
        self._cmds: queue.SimpleQueue = queue.SimpleQueue()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._streams: dict[str, _Stream] = {}
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None

    # ---- event-loop side ------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="tessera-engine", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def submit(self, req: Request) -> asyncio.Queue:
        """Queue a checked request; its `RequestOutput`s (or an exception) arrive on the returned queue."""
        if self.error is not None or self._thread is None or not self._thread.is_alive():
            raise EngineDead(f"the engine is not running: {self.error!r}")
        q: asyncio.Queue = asyncio.Queue()
        self._streams[req.id] = _Stream(asyncio.get_running_loop(), q, time.perf_counter())
        self._cmds.put(("add", req))
        self._wake.set()
        return q

    def abort(self, request_id: str) -> None:
        self._cmds.put(("abort", request_id))
        self._wake.set()

    # ---- engine thread ----------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self._drain()
                if not self.engine.has_unfinished():
                    self._wake.wait(self.idle_wait_s)
                    self._wake.clear()
                    continue
                for o in self.engine.step():
                    self._deliver(o)
                self._gauges()
        except BaseException as e:  # a bug or out of memory: fail every open request, refuse new ones
            self.error = e
            for s in list(self._streams.values()):
                s.loop.call_soon_threadsafe(s.q.put_nowait, e)
            self._streams.clear()

    def _drain(self) -> None:
        while True:
            try:
                cmd, arg = self._cmds.get_nowait()
            except queue.Empty:
                return
            if cmd == "add":
                try:
                    self.engine.add(arg)
                except (TypeError, ValueError) as e:  # refused: this request fails, the engine goes on
                    s = self._streams.pop(arg.id, None)
                    if s is not None:
                        s.loop.call_soon_threadsafe(s.q.put_nowait, e)
            else:
                self.engine.abort(arg)
                if self._streams.pop(arg, None) is not None and self.metrics is not None:
                    self.metrics.aborted()
            self._gauges()

    def _deliver(self, o: RequestOutput) -> None:
        s = self._streams.get(o.request_id)
        if s is None:  # aborted meanwhile
            return
        now = time.perf_counter()
        if s.first is None:
            s.first = now
        if o.finished:
            del self._streams[o.request_id]
            if self.metrics is not None:
                c = o.completion
                self.metrics.finished(c.finish_reason, len(c.prompt_ids), len(c.token_ids), s.first - s.submitted,
                                      (now - s.first) / (len(c.token_ids) - 1) if len(c.token_ids) > 1 else None)
        s.loop.call_soon_threadsafe(s.q.put_nowait, o)

    def _gauges(self) -> None:
        if self.metrics is not None:
            e = self.engine
            self.metrics.gauges(e.num_running, e.num_waiting, e.kv_bytes())
