"""M2N: the token exchange between M attention ranks and N expert ranks (MegaScale-Infer, arXiv 2504.02263,
section 5), over point-to-point `torch.distributed` (gloo or NCCL).

An attention rank is a client: for one MoE layer and micro-batch it sends every expert rank a header
(layer, rows, rows per local expert) and then the rows, posts the receive of the results and goes on with
the next micro-batch's attention; `recv` later waits for them. An expert rank is a server: `serve` answers
the attention ranks' requests in the order each sent them, each one independently (they own different
sequences and may finish at different steps), until every attention rank has sent its stop header.

    m2n = M2N(attn_ranks=[0, 1], expert_ranks=[2, 3], hidden=H, local_experts=E // 2, max_rows=T * k, ...)
    # attention rank                                   # expert rank
    p = m2n.send(layer, rows, matrix)  # [S, H], [N, EL]    m2n.serve(lambda layer, rows, offsets: ...)
    back = m2n.recv(p)                 # [S, H] results
    m2n.stop()

Persistent state: receive buffers are allocated once, for `max_rows` rows per request and `slots`
requests in flight (one per micro-batch); no group is created per call; counts go first, rows second.
Messages between one pair travel on three tags (headers, rows, results), each in FIFO order. Every wait
is bounded by `timeout_s`; a peer that dies ends the wait with an error naming it.
"""

from __future__ import annotations

import datetime

import torch
import torch.distributed as dist

HEADER, ROWS, RESULTS = 11, 12, 13
STOP = -1


class M2NError(RuntimeError):
    """A peer of the M2N exchange died or stalled: a bounded wait expired or its connection closed."""


class _Pending:
    def __init__(self, slot: torch.Tensor, works: list, counts: list[int], keep: list):
        self.slot, self.works, self.counts, self.keep = slot, works, counts, keep


class M2N:
    def __init__(self, attn_ranks: list[int], expert_ranks: list[int], hidden: int, local_experts: int,
                 max_rows: int, dtype=torch.float32, device="cpu", slots: int = 4, timeout_s: float = 60.0):
        me = dist.get_rank()
        if me not in attn_ranks and me not in expert_ranks:
            raise ValueError(f"M2N: rank {me} is neither an attention rank {attn_ranks} nor an expert rank {expert_ranks}")
        self.attn, self.experts, self.me = list(attn_ranks), list(expert_ranks), me
        self.hidden, self.local, self.max_rows, self.timeout_s = hidden, local_experts, max_rows, timeout_s
        self.is_attention = me in self.attn
        self.bytes_sent = 0
        n_buf = slots if self.is_attention else len(self.attn)
        self._buf = torch.empty(n_buf, max_rows, hidden, dtype=dtype, device=device)  # results / requests
        self.slots = slots
        self._slot = 0
        self._in_flight = 0  # sends whose results were not received yet (each holds a slot)
        self._hdr = torch.zeros(2 + local_experts, dtype=torch.long)  # expert side: the request being read

    # -- attention side --------------------------------------------------------------------------
    def send(self, layer: int, rows: torch.Tensor, matrix: torch.Tensor) -> _Pending:
        """rows [S, H] grouped by destination expert rank, then local expert (as `plan_sends` orders them);
        matrix [N, EL] rows per expert rank and local expert. Returns what `recv` needs."""
        S = rows.shape[0]
        if S > self.max_rows or matrix.shape != (len(self.experts), self.local):
            raise ValueError(f"M2N send: {S} rows (at most {self.max_rows}) and a [{len(self.experts)}, "
                             f"{self.local}] count matrix expected, got {tuple(matrix.shape)}")
        if self._in_flight >= self.slots:  # the next slot's results are still on their way: refuse, never overwrite
            raise ValueError(f"M2N send: {self._in_flight} requests in flight fill all {self.slots} result slots; "
                             "create the M2N context with slots >= micro-batches")
        slot = self._buf[self._slot % len(self._buf), :S]  # a micro-batch's results; slots rotate
        self._slot += 1
        self._in_flight += 1
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
                works.append(self._post(dist.irecv, slot[start:start + counts[j]], dst, RESULTS))
                self.bytes_sent += chunk.numel() * chunk.element_size()
            start += counts[j]
        return _Pending(slot, works, counts, keep)

    def recv(self, pending: _Pending) -> torch.Tensor:
        """The expert ranks' results for one `send`, [S, H] in the rows' order."""
        for w in pending.works:
            self._wait(w, "results from the expert ranks")
        self._in_flight -= 1
        return pending.slot  # valid until `slots` more sends: copy (or consume) it before then

    def stop(self) -> None:
        """This attention rank sends no more requests (every expert rank's `serve` counts it out)."""
        hdr = torch.full((2 + self.local,), STOP, dtype=torch.long)
        for w in [self._post(dist.isend, hdr, dst, HEADER) for dst in self.experts]:
            self._wait(w, "the stop header")

    # -- expert side -----------------------------------------------------------------------------
    def serve(self, experts_fn) -> int:
        """Answer requests until every attention rank stopped: `experts_fn(layer, rows [n, H], offsets
        [EL + 1]) -> [n, H]` for each, a new tensor (not a view of `rows`: the next request from the same
        attention rank is received into that buffer while the results are still being sent). Returns the
        number of requests served."""
        live, sends, served = set(self.attn), [], 0
        hdr = self._hdr

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
            offsets = torch.zeros(self.local + 1, dtype=torch.long)
            offsets[1:] = torch.cumsum(counts, 0)
            if n:
                out = experts_fn(layer, rows, offsets).contiguous()
                sends.append((out, self._post(dist.isend, out, a, RESULTS)))
                self.bytes_sent += out.numel() * out.element_size()
            served += 1
            if len(sends) > 4 * len(self.attn):  # results travel while the next request is read; bound them
                _, w = sends.pop(0)
                self._wait(w, "results to an attention rank")
        for _, w in sends:
            self._wait(w, "results to an attention rank")
        return served

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
