"""M2N: the token exchange between M attention ranks and N expert ranks (MegaScale-Infer, arXiv 2504.02263,
section 5). Two backends with one contract, chosen by `make_m2n(backend, ...)`:
- "p2p" (`M2N`, this file): point-to-point `torch.distributed` (gloo or NCCL).
- "heap" (`M2NHeap`, `m2n_heap.py`): the symmetric heap with ready flags (CPU ranks on one host).

An attention rank is a client: for one MoE layer and micro-batch it sends every expert rank a header
(layer, rows, rows per local expert) and then the rows, and goes on with the next micro-batch's attention;
`recv` later waits for the results. An expert rank is a server: `serve` answers the attention ranks'
requests in the order each sent them, each one independently (they own different sequences and may
finish at different steps), until every attention rank has sent its stop header; `serve(..., batch=True)`
instead answers one request of every live attention rank per round with one expert call (`m2n_batch.py`).

    m2n = make_m2n("p2p", attn_ranks=[0, 1], expert_ranks=[2, 3], hidden=H, local_experts=E // 2,
                   max_rows=T * k, ...)
    # attention rank                                   # expert rank
    p = m2n.send(layer, rows, matrix)  # [S, H], [N, EL]    m2n.serve(lambda layer, rows, offsets: ...)
    back = m2n.recv(p)                 # [S, H] results
    m2n.stop()

Persistent state: receive buffers are allocated once, for `max_rows` rows per request and `slots`
requests in flight (one per micro-batch); no group is created per call; counts go first, rows second.
Over p2p, messages between one pair travel on three tags (headers, rows, results), each in FIFO order.
Every wait is bounded by `timeout_s`; a peer that dies ends the wait with an error naming it.
"""

from __future__ import annotations

import datetime

import torch
import torch.distributed as dist

from tessera.parallel.disagg.m2n_batch import Request, serve_rounds

HEADER, ROWS, RESULTS = 11, 12, 13
STOP = -1
BACKENDS = ("p2p", "heap")


class M2NError(RuntimeError):
    """A peer of the M2N exchange died or stalled: a bounded wait expired or its connection closed."""


def make_m2n(backend: str, attn_ranks: list[int], expert_ranks: list[int], hidden: int, local_experts: int,
             max_rows: int, dtype=torch.float32, device="cpu", slots: int = 4, timeout_s: float = 60.0,
             group=None):
    """The M2N context of `backend` ("p2p" or "heap"); collective over the attention and expert ranks.
    `group` (heap only: p2p addresses global ranks) is the process group of exactly those ranks (default:
    the world)."""
    if backend == "p2p":
        return M2N(attn_ranks, expert_ranks, hidden, local_experts, max_rows, dtype, device, slots, timeout_s)
    if backend == "heap":
        from tessera.parallel.disagg.m2n_heap import M2NHeap

        return M2NHeap(attn_ranks, expert_ranks, hidden, local_experts, max_rows, dtype, device, slots, timeout_s,
                       group)
    raise ValueError(f"M2N backend must be one of {', '.join(BACKENDS)}; got {backend!r}")


class M2NBase:
    """What the backends share: the roles, the checks of `send` and the result slots' bookkeeping (a slot
    whose results were not received yet is never handed out again)."""

    backend = ""

    def __init__(self, attn_ranks: list[int], expert_ranks: list[int], hidden: int, local_experts: int,
                 max_rows: int, slots: int, timeout_s: float):
        me = dist.get_rank()
        if me not in attn_ranks and me not in expert_ranks:
            raise ValueError(f"M2N: rank {me} is neither an attention rank {attn_ranks} nor an expert rank {expert_ranks}")
        if set(attn_ranks) & set(expert_ranks) or slots < 1 or max_rows < 0:
            raise ValueError(f"M2N: attention ranks {attn_ranks} and expert ranks {expert_ranks} must not overlap, "
                             f"slots ({slots}) must be >= 1 and max_rows ({max_rows}) >= 0")
        self.attn, self.experts, self.me = list(attn_ranks), list(expert_ranks), me
        self.hidden, self.local, self.max_rows, self.timeout_s = hidden, local_experts, max_rows, timeout_s
        self.is_attention = me in self.attn
        self.slots = slots
        self.bytes_sent = 0
        self.calls = 0  # expert side: experts_fn calls made by serve (fewer than requests when batched)
        self._sent = 0  # sends so far: the next one's results go to slot _sent % slots
        self._busy: set[int] = set()  # result slots of sends whose results were not received yet

    def _claim(self, rows: torch.Tensor, matrix: torch.Tensor) -> int:
        """Check a send's arguments and take its result slot (nothing changes when they are refused)."""
        S = rows.shape[0]
        if (rows.dim() != 2 or rows.shape[1] != self.hidden or S > self.max_rows
                or matrix.shape != (len(self.experts), self.local) or int(matrix.sum()) != S):
            raise ValueError(f"M2N send: {S} rows of width {self.hidden} (at most {self.max_rows}) and a "
                             f"[{len(self.experts)}, {self.local}] count matrix summing to the rows expected, got rows "
                             f"{tuple(rows.shape)} and counts {tuple(matrix.shape)} summing to {int(matrix.sum())}")
        slot = self._sent % self.slots
        if slot in self._busy:  # its results are still on their way: refuse, never overwrite
            why = (f"{len(self._busy)} requests in flight fill all {self.slots} result slots"
                   if len(self._busy) >= self.slots else
                   f"result slot {slot} still holds the results of an earlier send (recv in send order)")
            raise ValueError(f"M2N send: {why}; create the M2N context with slots >= micro-batches")
        self._sent += 1
        self._busy.add(slot)
        return slot

    def _release(self, slot: int) -> None:
        self._busy.discard(slot)

    def close(self) -> None:
        """Free what the context holds (nothing to do for p2p)."""


class _Pending:
    def __init__(self, slot: int, buf: torch.Tensor, works: list, keep: list):
        self.slot, self.buf, self.works, self.keep = slot, buf, works, keep


class M2N(M2NBase):
    backend = "p2p"

    def __init__(self, attn_ranks: list[int], expert_ranks: list[int], hidden: int, local_experts: int,
                 max_rows: int, dtype=torch.float32, device="cpu", slots: int = 4, timeout_s: float = 60.0):
        super().__init__(attn_ranks, expert_ranks, hidden, local_experts, max_rows, slots, timeout_s)
        n_buf = slots if self.is_attention else len(self.attn)
        self._buf = torch.empty(n_buf, max_rows, hidden, dtype=dtype, device=device)  # results / requests
        self._hdr = torch.zeros(len(self.attn), 2 + local_experts, dtype=torch.long)  # expert side: headers

    # -- attention side --------------------------------------------------------------------------
    def send(self, layer: int, rows: torch.Tensor, matrix: torch.Tensor) -> _Pending:
        """rows [S, H] grouped by destination expert rank, then local expert (as `plan_sends` orders them);
        matrix [N, EL] rows per expert rank and local expert. Returns what `recv` needs."""
        slot = self._claim(rows, matrix)
        buf = self._buf[slot, :rows.shape[0]]  # this micro-batch's results
        counts = matrix.sum(1).tolist()
        works, keep, start = [], [], 0
        for j, dst in enumerate(self.experts):
            hdr = torch.tensor([layer, counts[j], *matrix[j].tolist()], dtype=torch.long)
            keep.append(hdr)
            works.append(self._post(dist.isend, hdr, dst, HEADER))
            if counts[j]:
                chunk = rows[start:start + counts[j]].contiguous()
                keep.append(chunk)
                works.append(self._post(dist.isend, chunk, dst, ROWS))
                works.append(self._post(dist.irecv, buf[start:start + counts[j]], dst, RESULTS))
                self.bytes_sent += chunk.numel() * chunk.element_size()
            start += counts[j]
        return _Pending(slot, buf, works, keep)

    def recv(self, pending: _Pending) -> torch.Tensor:
        """The expert ranks' results for one `send`, [S, H] in the rows' order."""
        for w in pending.works:
            self._wait(w, "results from the expert ranks")
        self._release(pending.slot)
        return pending.buf  # valid until `slots` more sends: copy (or consume) it before then

    def stop(self) -> None:
        """This attention rank sends no more requests (every expert rank's `serve` counts it out)."""
        hdr = torch.full((2 + self.local,), STOP, dtype=torch.long)
        for w in [self._post(dist.isend, hdr, dst, HEADER) for dst in self.experts]:
            self._wait(w, "the stop header")

    # -- expert side -----------------------------------------------------------------------------
    def serve(self, experts_fn, batch: bool = False) -> int:
        """Answer requests until every attention rank stopped: `experts_fn(layer, rows [n, H], offsets
        [EL + 1]) -> [n, H]` for each, a new tensor (not a view of `rows`: the next request from the same
        attention rank is received into that buffer while the results are still being sent). batch=True:
        one call per round over one request of every live attention rank (`m2n_batch.serve_rounds`).
        Returns the number of requests served; `self.calls` counts the experts_fn calls."""
        self._sends = []
        if batch:
            served, calls = self._serve_rounds(experts_fn)
            self.calls += calls
        else:
            served = self._serve_each(experts_fn)
        for _, w in self._sends:
            self._wait(w, "results to an attention rank")
        return served

    def _serve_each(self, experts_fn) -> int:
        live, served = set(self.attn), 0
        hdr = self._hdr[0]

        def next_header():  # from any attention rank: one server waits on M clients this way
            try:
                return dist.irecv(hdr, tag=HEADER)
            except RuntimeError as e:
                raise M2NError(f"expert rank {self.me}: waiting for a request from attention rank(s) "
                               f"{sorted(live)} failed: {str(e).splitlines()[0]}") from e

        pending = next_header()
        while live:
            self._wait(pending, f"a request from attention rank(s) {sorted(live)}")
            a = pending.source_rank()
            layer, n, counts = int(hdr[0]), int(hdr[1]), hdr[2:].clone()
            if layer == STOP:
                live.discard(a)
                if live:
                    pending = next_header()
                continue
            rows = self._buf[self.attn.index(a), :n]
            if n:
                self._wait(self._post(dist.irecv, rows, a, ROWS), f"rows from attention rank {a}")
            pending = next_header()  # the next request's header lands while the experts run
            if n:
                offsets = torch.zeros(self.local + 1, dtype=torch.long)
                offsets[1:] = torch.cumsum(counts, 0)
                self._reply(a, experts_fn(layer, rows, offsets).contiguous(), None)
                self.calls += 1
            served += 1
        return served

    def _serve_rounds(self, experts_fn) -> tuple[int, int]:
        # headers from each attention rank on its own (a round needs one of each), the next one posted as
        # soon as a request's rows are in, so it lands while the experts run
        posted = {a: self._post(dist.irecv, self._hdr[i], a, HEADER) for i, a in enumerate(self.attn)}

        def take(a: int) -> Request | None:
            i = self.attn.index(a)
            self._wait(posted.pop(a), f"a request from attention rank {a}")
            layer, n, counts = int(self._hdr[i, 0]), int(self._hdr[i, 1]), self._hdr[i, 2:].clone()
            if layer == STOP:
                return None
            rows = self._buf[i, :n]
            if n:
                self._wait(self._post(dist.irecv, rows, a, ROWS), f"rows from attention rank {a}")
            posted[a] = self._post(dist.irecv, self._hdr[i], a, HEADER)
            return Request(layer, counts, rows)

        return serve_rounds(self.attn, take, self._reply, experts_fn)

    def _reply(self, a: int, out: torch.Tensor, pos: torch.Tensor | None) -> None:
        """Send attention rank a its results, out[pos] (pos None: all of out); nothing for no rows."""
        res = out if pos is None else out.index_select(0, pos)
        if not len(res):
            return
        self._sends.append((res, self._post(dist.isend, res, a, RESULTS)))
        self.bytes_sent += res.numel() * res.element_size()
        if len(self._sends) > 4 * len(self.attn):  # results travel while the next request is read; bound them
            _, w = self._sends.pop(0)
            self._wait(w, "results to an attention rank")

    def _post(self, op, tensor: torch.Tensor, peer: int, tag: int):
        side = "attention" if peer in self.attn else "expert"
        try:
            return op(tensor, peer, tag=tag)
        except RuntimeError as e:  # gloo: the peer's connection is closed (it died)
            raise M2NError(f"rank {self.me}: {side} rank {peer} is gone: {str(e).splitlines()[0]}") from e

    def _wait(self, work, what: str) -> None:
        try:
            ok = work.wait(datetime.timedelta(seconds=self.timeout_s))
        except RuntimeError as e:  # gloo: a closed connection or its own timeout
            raise M2NError(f"rank {self.me}: waiting for {what} failed: {str(e).splitlines()[0]}") from e
        if ok is False:
            raise M2NError(f"rank {self.me}: no {what} within {self.timeout_s:.0f} s")
