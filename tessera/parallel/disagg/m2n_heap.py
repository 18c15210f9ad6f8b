"""M2N over the symmetric heap with ready flags: the sender writes the rows straight into the receiver's slot
and then raises a sequence-number flag in the receiver's heap; the receiver polls its own flag (MegaScale-
Infer, arXiv 2504.02263, section 5; the put-then-signal pattern of NVSHMEM and of Triton-distributed's
expert-parallel dispatch, arXiv 2504.19442, which `tessera/kernels/moe/ep_a2a.py` runs as Triton kernels).
Same contract as the point-to-point `M2N` (`send` / `recv` / `stop` / `serve`, `M2NError`, bounded waits).

Layout (allocated once, symmetric: every rank holds every object; A attention ranks, N expert ranks):

    req    [A, slots, max_rows, H]  on an expert rank: each attention rank's request slots
    hdr    [A, slots, 4 + EL] int64 on an expert rank: per slot (layer, rows, first row in the sender's
                                    order, result slot, rows per local expert)
    posted [A] int64                on an expert rank: the last request number each attention rank posted
    res    [slots, max_rows, H]     on an attention rank: its result slots
    done   [N] int64                on an attention rank: the last request number each expert rank answered
    failed [W] int64                on every rank: which ranks of the group gave up (an M2NError or an
                                    error inside `serve`): their peers fail at once instead of at the timeout

Protocol. Attention rank a numbers its requests k = 1, 2, ... (a stop header is a request too) and every
expert rank receives every one of them (zero rows included), so one number serves all pairs. Request k
uses request slot (k - 1) % slots on each expert rank. Before writing it, a waits for the credit
`done[j] >= k - slots` (expert j has finished with the request that used the slot before); then it writes
the rows and the header into j's slot and sets j's `posted[a] = k`. Expert j waits for `posted[a] >= k`,
runs its experts on the rows in place, writes the results into a's result slot at the rows' positions and
sets a's `done[j] = k`: the result flag and the credit are one counter, because the results are written
after the experts have read the rows. `recv` waits for `done[j] >= k` of the expert ranks that got rows.
Flags only grow, so nothing is reset between requests, and a context serves any number of `serve` calls.

Memory order. On x86 (TSO) stores become visible in program order and loads are not reordered with other
loads, so a reader that sees the flag sees the rows written before it; `_release_fence` also orders the
non-temporal stores a large copy may use. A CUDA heap would need the payload stores and the flag's release
in one device-side kernel (the Triton put + `dl.notify` of ep_a2a.py) or a stream-ordered copy followed by
a system-scope fence before the flag: not built, so this backend refuses CUDA tensors.

Waits poll a flag with a short spin, then sleeps of 20-200 us (four processes share two cores here), are
bounded by `timeout_s`, and check every 0.2 s that the awaited peers' processes still exist (the heap is
one host's /dev/shm, so their pids are meaningful) and have not given up: a dead or failed peer is an
`M2NError` naming it within about a second instead of at the timeout. A context that raised is done. The heap's files are unlinked once every rank mapped them
(`SymmetricHeap`), so nothing is left in /dev/shm however the processes end.
"""

from __future__ import annotations

import os
import socket
import threading
import time

import torch
import torch.distributed as dist

from tessera.distributed import parallel_state as ps
from tessera.distributed.symm import ALIGN, SymmetricHeap
from tessera.parallel.disagg.m2n import STOP, M2NBase, M2NError
from tessera.parallel.disagg.m2n_batch import Request, answer, serve_rounds

SPIN_S = 50e-6  # busy polling before the first sleep: a reply often lands within it
NAP_S = (20e-6, 200e-6)  # first and longest sleep between polls
LIVENESS_S = 0.2  # how often a waiting rank checks that its peers' processes exist
_FENCE = threading.Lock()


def _release_fence() -> None:
    """Order every store before it (the rows, the header) before every store after it (the flag). x86-TSO
    already keeps ordinary stores in order; the uncontended lock's atomic compare-and-swap is a locked
    instruction, which also drains the write-combining buffers of non-temporal stores."""
    _FENCE.acquire()
    _FENCE.release()


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            state = fh.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return True
    return state in ("Z", "X")  # a zombie has exited; its parent just has not reaped it yet


def _heap_bytes(shapes: list[tuple[tuple, torch.dtype]]) -> int:
    nbytes = ALIGN  # the heap's own wait-error slot
    for shape, dtype in shapes:
        n = torch.Size(shape).numel() * torch.empty((), dtype=dtype).element_size()
        nbytes += -(-n // ALIGN) * ALIGN
    return nbytes


class _Pending:
    def __init__(self, slot: int, k: int, rows: int, experts: list[int]):
        self.slot, self.k, self.rows, self.experts = slot, k, rows, experts  # experts: indices that got rows


class M2NHeap(M2NBase):
    backend = "heap"

    def __init__(self, attn_ranks: list[int], expert_ranks: list[int], hidden: int, local_experts: int,
                 max_rows: int, dtype=torch.float32, device="cpu", slots: int = 4, timeout_s: float = 60.0,
                 group=None):
        super().__init__(attn_ranks, expert_ranks, hidden, local_experts, max_rows, slots, timeout_s)
        if torch.device(device).type != "cpu":
            raise ValueError("M2N heap backend: CPU ranks only (a CUDA version needs a device-side put and flag "
                             "release, not built); use the p2p backend on GPUs")
        g = ps.group_or_world(group)
        members = dist.get_process_group_ranks(g)
        if sorted(members) != sorted(self.attn + self.experts):
            raise ValueError(f"M2N heap backend: the group's ranks {sorted(members)} must be exactly the attention "
                             f"and expert ranks {sorted(self.attn + self.experts)}")
        hr = {r: dist.get_group_rank(g, r) for r in members}  # global -> heap rank
        A, N, EL = len(self.attn), len(self.experts), local_experts
        shapes = {"req": ((A, slots, max_rows, hidden), dtype), "hdr": ((A, slots, 4 + EL), torch.int64),
                  "posted": ((A,), torch.int64), "res": ((slots, max_rows, hidden), dtype),
                  "done": ((N,), torch.int64), "failed": ((len(members),), torch.int64)}
        self.heap = SymmetricHeap(_heap_bytes(list(shapes.values())), g)  # collective
        for name, (shape, dt) in shapes.items():
            setattr(self, name, self.heap.tensor(shape, dt, f"m2n_{name}"))
        who = [None] * len(members)
        dist.all_gather_object(who, (socket.gethostname(), os.getpid()), group=g)
        if len({h for h, _ in who}) > 1:  # defensive: a /dev/shm file is one host's
            raise ValueError(f"M2N heap backend: every rank must run on one host, got {sorted({h for h, _ in who})}")
        self._pid, self._hr = {r: who[hr[r]][1] for r in members}, hr
        self._failed_at = [self.heap.peer(self.failed, r) for r in range(len(members))]
        if self.is_attention:  # what this rank writes: the expert ranks' request slots and flags
            self._ai = self.attn.index(self.me)
            self._to = [(self.heap.peer(self.req, hr[e]), self.heap.peer(self.hdr, hr[e]),
                         self.heap.peer(self.posted, hr[e])) for e in self.experts]
        else:  # the attention ranks' result slots and flags
            self._ji = self.experts.index(self.me)
            self._back = [(self.heap.peer(self.res, hr[a]), self.heap.peer(self.done, hr[a])) for a in self.attn]
        self._k = 0  # attention side: requests posted so far (stops included)
        self._seen = [0] * A  # expert side: the last request read from each attention rank
        self._cur: dict[int, tuple] = {}  # expert side: per attention rank, the request being answered
        self._rr = 0  # expert side: where the next any-source poll starts (fairness)

    # -- attention side --------------------------------------------------------------------------
    def send(self, layer: int, rows: torch.Tensor, matrix: torch.Tensor) -> _Pending:
        """rows [S, H] grouped by destination expert rank, then local expert; matrix [N, EL] rows per expert
        rank and local expert. Writes every expert rank's part into its request slot; returns at once
        (unless a slot's credit is missing)."""
        slot = self._claim(rows, matrix)
        counts = matrix.sum(1).tolist()
        self._k += 1
        start = 0
        for j in range(len(self.experts)):
            self._post(j, [layer, counts[j], start, slot, *matrix[j].tolist()], rows[start:start + counts[j]])
            start += counts[j]
        return _Pending(slot, self._k, rows.shape[0], [j for j, c in enumerate(counts) if c])

    def recv(self, pending: _Pending) -> torch.Tensor:
        """The expert ranks' results for one `send`, [S, H] in the rows' order: a view of this rank's
        result slot, valid until `slots` more sends."""
        k = pending.k
        late = [j for j, d in enumerate(self.done.tolist()) if d < k and j in pending.experts]
        if late:
            peers = [self.experts[j] for j in late]

            def ready():
                done = self.done.tolist()
                return all(done[j] >= k for j in late)

            self._await(ready, f"results of request {k} from expert rank(s) {peers}", peers)
        self._release(pending.slot)
        return self.res[pending.slot, :pending.rows]

    def stop(self) -> None:
        """This attention rank sends no more requests (a header with layer STOP to every expert rank)."""
        self._k += 1
        for j in range(len(self.experts)):
            self._post(j, [STOP, 0, 0, 0] + [0] * self.local, None)

    def _post(self, j: int, header: list[int], chunk: torch.Tensor | None) -> None:
        req, hdr, posted = self._to[j]
        k, s = self._k, (self._k - 1) % self.slots
        if int(self.done[j]) < k - self.slots:  # the expert rank still reads the request that used slot s
            e = self.experts[j]
            self._await(lambda: int(self.done[j]) >= k - self.slots,
                        f"a free request slot on expert rank {e} (request {k - self.slots} not answered)", [e])
        if chunk is not None and len(chunk):
            req[self._ai, s, :len(chunk)].copy_(chunk)  # the one copy: into the expert rank's slot
            self.bytes_sent += chunk.numel() * chunk.element_size()
        hdr[self._ai, s].copy_(torch.tensor(header, dtype=torch.int64))
        _release_fence()
        posted[self._ai] = k  # an aligned 8-byte store: the reader sees the old or the new number

    # -- expert side -----------------------------------------------------------------------------
    def serve(self, experts_fn, batch: bool = False) -> int:
        """Answer requests until every attention rank stopped: `experts_fn(layer, rows [n, H], offsets
        [EL + 1]) -> [n, H]` (a new tensor; `rows` is the request slot itself). batch=False: each request as
        it comes (any attention rank whose flag moved); batch=True: rounds of one request per live attention
        rank, one call each (`m2n_batch.serve_rounds`). Returns the requests served; `self.calls` counts
        the experts_fn calls."""
        try:
            if batch:
                served, calls = serve_rounds(self.attn, self._take, self._reply, experts_fn)
                self.calls += calls
                return served
            live, served = list(self.attn), 0
            while live:
                a = self._next_ready(live)
                q = self._take(a)
                if q is None:
                    live.remove(a)
                    continue
                self.calls += answer(q.layer, [(a, q)], experts_fn, self._reply)
                served += 1
            return served
        except BaseException:
            self._give_up()  # the attention ranks waiting for this rank's results fail now, not at their timeout
            raise

    def _next_ready(self, live: list[int]) -> int:
        """The first attention rank (from a rotating start) with an unread request; waits (bounded) for one."""
        idx = [self.attn.index(a) for a in live]

        def ready():
            posted = self.posted.tolist()
            for t in range(len(idx)):
                i = idx[(self._rr + t) % len(idx)]
                if posted[i] > self._seen[i]:
                    self._rr += 1
                    return (self.attn[i],)  # a tuple: true even for rank 0
            return None

        return self._await(ready, f"a request from attention rank(s) {live}", live)[0]

    def _take(self, a: int) -> Request | None:
        """Attention rank a's next request (waits, bounded); None for its stop header (acknowledged here)."""
        i = self.attn.index(a)
        k = self._seen[i] + 1
        if int(self.posted[i]) < k:
            self._await(lambda: int(self.posted[i]) >= k, f"a request from attention rank {a}", [a])
        s = (k - 1) % self.slots
        layer, n, start, slot, *counts = self.hdr[i, s].tolist()
        self._seen[i] = k
        self._cur[i] = (k, start, slot)
        if layer == STOP:
            self._reply(a, self.req[i, s, :0], None)  # frees its request slot (the sender's credit)
            return None
        return Request(layer, torch.tensor(counts, dtype=torch.long), self.req[i, s, :n])

    def _reply(self, a: int, out: torch.Tensor, pos: torch.Tensor | None) -> None:
        """Write out[pos] (pos None: all of out) into attention rank a's result slot, then raise its flag."""
        i = self.attn.index(a)
        k, start, slot = self._cur.pop(i)
        res, done = self._back[i]
        n = len(out) if pos is None else len(pos)
        if n:
            dst = res[slot, start:start + n]  # the one copy: into the attention rank's result slot
            if pos is None:
                dst.copy_(out)
            else:
                torch.index_select(out, 0, pos, out=dst)
            self.bytes_sent += dst.numel() * dst.element_size()
        _release_fence()
        done[self._ji] = k

    # -- waiting ---------------------------------------------------------------------------------
    def _await(self, ready, what: str, peers: list[int]):
        """ready() until it returns something true (returned): a short spin, then growing sleeps; raises
        M2NError after timeout_s, or as soon as one of `peers` (global ranks) has exited."""
        t0 = time.monotonic()
        deadline, check, nap = t0 + self.timeout_s, t0 + LIVENESS_S, NAP_S[0]
        while True:
            v = ready()
            if v:
                return v
            now = time.monotonic()
            if now - t0 < SPIN_S:
                continue
            if now > deadline:
                self._give_up()
                raise M2NError(f"rank {self.me}: no {what} within {self.timeout_s:.0f} s")
            if now > check:
                failed = self.failed.tolist()
                for r in peers:
                    side = "attention" if r in self.attn else "expert"
                    if _gone(self._pid[r]) or failed[self._hr[r]]:
                        self._give_up()
                        why = "gave up (an M2N error there)" if failed[self._hr[r]] else \
                            f"is gone (process {self._pid[r]} exited)"
                        raise M2NError(f"rank {self.me}: {side} rank {r} {why} while waiting for {what}")
                check = now + LIVENESS_S
            time.sleep(nap)
            nap = min(2 * nap, NAP_S[1])

    def _give_up(self) -> None:
        """Tell every rank of the group that this one stopped taking part (they check it while waiting)."""
        for f in self._failed_at:
            f[self.heap.rank] = 1

    def close(self) -> None:
        self.heap.close()
