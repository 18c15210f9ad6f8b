"""Does COMET's order of work pay on this CPU? One expert-parallel MoE layer (dispatch, gate/up + SwiGLU, down,
top-k combine) on W gloo ranks, three schedules in the same run, median and spread over repetitions:

- sequential: all-to-all of the rows, every GEMM, all-to-all back (the EP path of `parallel/ep_dispatch.py`);
- pipelined (Tutel / FasterMoE): the tokens in C chunks, chunk c+1's all-to-all in flight while chunk c computes,
  chunk c's results sent back while c+1 computes (async torch.distributed);
- COMET order (arXiv 2502.19811): layer0 computes this rank's own rows while the peers' rows arrive, then each
  source's rows as they land; layer1 computes the down projection column block by column block and sends each
  block's top-k partial sums home while the next block computes. One communication thread plays the part of
  the fused kernels' n_c communication programs (gloo's `send` blocks its caller for about the transfer time,
  so a thread is what keeps the compute thread free). The Triton kernels themselves
  (`kernels/moe/comet_layer{0,1}.py`) run only in the interpreter here, so they are not what is timed.

Compute is either real (fp32 GEMMs, one thread per rank: on 2 cores shared by 2 ranks and gloo's threads
nothing overlaps, so these numbers are labelled for what they are) or emulated by sleeps calibrated to the
real GEMMs of the same rows (measured in the same run, per row of each GEMM, the slowest rank's figure used
by every rank), so that the cores are free for the transfers, as a GPU's copy engines / NVLink are. Every
schedule's real-compute output is checked against the sequential one.

Noise the benchmark itself used to add, and what it does instead: ranks leave a barrier up to a message
latency apart, so every repetition starts all ranks at one agreed perf_counter instant (one host: one
CLOCK_MONOTONIC) and counts each rank's time from it (slowest rank); `time.sleep` woke up 70-100 us late
(Linux timer slack), so the ranks set a 1 ns slack and spin the last tens of microseconds of each emulated
GEMM; the schedules run interleaved per repetition, with garbage collection held off.

Model: `tessera.distributed.moe_perfmodel_cpu.breakdown(settings)` (`model_prediction`), from primitives
timed alone in the same run (`_parts`: the host steps on this rank's data, all-to-all and pairwise exchange
at the sizes `message_bytes` asks for), never from a schedule's total; printed beside the emulated medians
with its parts. The primitives' per-repetition samples are passed as they are: the model resamples them.

    PYTHONPATH=. python benchmarks/bench_moe_overlap.py [--world 2] [--reps 41]
Writes benchmarks/results/moe_overlap_cpu.{json,md} (or --out DIR).
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import os
import queue
import statistics
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import torch
import torch.nn.functional as F
from machine import describe
from save import save_result

SETTINGS = {  # tokens per rank, top-k, experts, hidden, expert width; chunks (pipelined), column blocks (COMET)
    "comm~compute": {"T": 256, "k": 2, "E": 8, "H": 1024, "I": 16, "chunks": 2, "blocks": 4},
    "compute-heavy": {"T": 256, "k": 2, "E": 8, "H": 1024, "I": 128, "chunks": 2, "blocks": 4},
}
SCHEDULES = ("sequential", "pipelined", "comet")


PR_SET_TIMERSLACK = 29  # linux/prctl.h


def _set_timer_slack(ns: int = 1) -> bool:
    """Linux lets a sleeping thread wake up to 50 us late by default (timer slack): ~70-100 us per
    `time.sleep` on this VM, ten sleeps per COMET layer. 1 ns leaves ~15-25 us of wake-up latency."""
    try:
        import ctypes

        return ctypes.CDLL(None).prctl(PR_SET_TIMERSLACK, ns, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


class Rank:
    """One rank's inputs, experts and the compute (real GEMMs or calibrated sleeps) of its MoE layer."""

    def __init__(self, s: dict, me: int, W: int):
        g = torch.Generator().manual_seed(100 + me)
        self.s, self.me, self.W, self.EL = s, me, W, s["E"] // W
        self.x = torch.randn(s["T"], s["H"], generator=g)
        self.ids = torch.stack([torch.randperm(s["E"], generator=g)[: s["k"]] for _ in range(s["T"])])
        self.w = torch.softmax(torch.randn(s["T"], s["k"], generator=g), -1)
        gw = torch.Generator().manual_seed(7)  # the same experts everywhere; this rank keeps its slice
        lo = me * self.EL
        self.wgu = (torch.randn(s["E"], 2 * s["I"], s["H"], generator=gw) / s["H"] ** 0.5)[lo: lo + self.EL]
        self.wd = (torch.randn(s["E"], s["H"], s["I"], generator=gw) / s["I"] ** 0.5)[lo: lo + self.EL]
        self.per_row = None  # (s / row of GEMM0 + SwiGLU, s / row of GEMM1): set by calibrate(); None = real
        self.tail = 50e-6  # the end of an emulated GEMM is spun, not slept: set by _sleep_tail()

    def sleep(self, d: float) -> None:
        """Emulated compute of exactly `d` seconds: sleep all but the tail (the cores stay free), spin the
        tail (a sleep wakes up late by about the tail)."""
        end = time.perf_counter() + d
        if d > self.tail:
            time.sleep(d - self.tail)
        while time.perf_counter() < end:
            pass

    def gemm0(self, rows: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:  # [n, H] -> [n, I]
        if self.per_row:
            self.sleep(self.per_row[0] * len(rows))
            return rows.new_zeros(len(rows), self.s["I"])
        out = rows.new_empty(len(rows), self.s["I"])
        for e in experts.unique().tolist():
            m = experts == e
            g, u = (rows[m] @ self.wgu[e].T).chunk(2, -1)
            out[m] = F.silu(g) * u
        return out

    def gemm1(self, act: torch.Tensor, experts: torch.Tensor, cols: slice = slice(None)) -> torch.Tensor:
        width = len(range(self.s["H"])[cols])
        if self.per_row:
            self.sleep(self.per_row[1] * len(act) * width / self.s["H"])
            return act.new_zeros(len(act), width)
        out = act.new_empty(len(act), width)
        for e in experts.unique().tolist():
            m = experts == e
            out[m] = act[m] @ self.wd[e, cols].T
        return out


def _plan(r: Rank, tokens: torch.Tensor):
    """Rows of `tokens` this rank sends, destination-major then local expert: (rows, local expert, token, weight,
    counts per destination)."""
    ids, w = r.ids[tokens], r.w[tokens]
    flat = ids.flatten()
    order = torch.argsort(flat, stable=True)
    tok = tokens[order // r.s["k"]]
    counts = torch.bincount(flat // r.EL, minlength=r.W)
    return r.x[tok], flat[order] % r.EL, tok, w.flatten()[order], counts


def _a2a(send: torch.Tensor, send_counts, recv_counts, async_op=False):
    import torch.distributed as dist

    out = send.new_empty(sum(recv_counts), *send.shape[1:])
    work = dist.all_to_all_single(out, send.contiguous(), list(recv_counts), list(send_counts), async_op=async_op)
    return out, work


def _counts(counts: torch.Tensor) -> list[int]:
    import torch.distributed as dist

    got = torch.empty_like(counts)
    dist.all_to_all_single(got, counts)
    return got.tolist()


def _combine_rows(out: torch.Tensor, tok: torch.Tensor, back: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """out[t] += w_row * back[row] for every returned row of token t (the top-k sum at home)."""
    return out.index_add_(0, tok, back * w[:, None])


def sequential(r: Rank, tokens=None) -> torch.Tensor:
    tokens = torch.arange(r.s["T"]) if tokens is None else tokens
    rows, le, tok, w, counts = _plan(r, tokens)
    rc = _counts(counts)
    got, _ = _a2a(rows, counts.tolist(), rc)
    ge, _ = _a2a(le, counts.tolist(), rc)
    y = r.gemm1(r.gemm0(got, ge), ge)
    back, _ = _a2a(y, rc, counts.tolist())
    return _combine_rows(torch.zeros(r.s["T"], r.s["H"]), tok, back, w)


def pipelined(r: Rank) -> torch.Tensor:
    chunks = torch.arange(r.s["T"]).chunk(r.s["chunks"])
    plans = [_plan(r, c) for c in chunks]
    rcs = [_counts(p[4]) for p in plans]

    def send(i):
        return _a2a(plans[i][0], plans[i][4].tolist(), rcs[i], True), _a2a(plans[i][1], plans[i][4].tolist(), rcs[i], True)

    inflight, backs = send(0), []
    for i in range(len(chunks)):
        (got, w1), (ge, w2) = inflight
        if i + 1 < len(chunks):
            inflight = send(i + 1)  # chunk i+1 moves while chunk i computes
        w1.wait()
        w2.wait()
        y = r.gemm1(r.gemm0(got, ge), ge)
        backs.append(_a2a(y, rcs[i], plans[i][4].tolist(), True))
    out = torch.zeros(r.s["T"], r.s["H"])
    for (back, work), p in zip(backs, plans):
        work.wait()
        _combine_rows(out, p[2], back, p[3])
    return out


def _comet_prep(r: Rank, rows, le, tok, w, counts, rc) -> dict:
    """COMET order's host work between the counts and the communication thread: offsets, the home token
    lists, the column blocks, one packed message per peer, the receive buffers."""
    W, me, H, nb = r.W, r.me, r.s["H"], r.s["blocks"]
    off = [0, *torch.cumsum(counts, 0).tolist()]
    # home: my tokens held by each peer (sorted, as the expert rank groups them), to receive their partials
    home_tok = [tok[off[p]: off[p + 1]].unique() for p in range(W)]
    cols = [slice(int(c[0]), int(c[-1]) + 1) for c in torch.arange(H).chunk(nb)]
    # rows, their local expert, token and weight travel as one message per peer (the kernels push all four)
    packed = torch.cat([rows, le[:, None].float(), tok[:, None].float(), w[:, None]], 1)  # ids < 2^24: exact
    bufs = {s: torch.empty(rc[s], H + 3) for s in range(W) if s != me}
    partial_in = {(p, j): torch.empty(len(home_tok[p]), c.stop - c.start) for p in range(W) if p != me
                  for j, c in enumerate(cols)}
    return {"off": off, "home_tok": home_tok, "cols": cols, "packed": packed, "bufs": bufs, "partial_in": partial_in}


def _partial(y: torch.Tensor, sw: torch.Tensor, stok: torch.Tensor):
    """One source's top-k partial sums of a column block: (its tokens, [tokens, width] sums of w_row y_row)."""
    uniq, pos = stok.unique(return_inverse=True)
    return uniq, torch.zeros(len(uniq), y.shape[1]).index_add_(0, pos, y * sw[:, None])


def _add_block(out: torch.Tensor, tokens: torch.Tensor, cols: slice, part: torch.Tensor) -> None:
    out[tokens, cols] += part


def comet(r: Rank) -> torch.Tensor:
    """COMET's order; a communication thread does every send and receive (the fused kernels' n_c programs)."""
    import torch.distributed as dist

    W, me, H, nb = r.W, r.me, r.s["H"], r.s["blocks"]
    rows, le, tok, w, counts = _plan(r, torch.arange(r.s["T"]))
    rc = _counts(counts)  # [W] rows from each source
    st = _comet_prep(r, rows, le, tok, w, counts, rc)
    off, cols, packed, bufs, partial_in = st["off"], st["cols"], st["packed"], st["bufs"], st["partial_in"]
    ready = {s: threading.Event() for s in bufs}
    outbox, err = queue.Queue(), []

    def comm():
        try:
            recvs = {s: dist.irecv(b, src=s, tag=10) for s, b in bufs.items()}
            pin = {k: dist.irecv(t, src=k[0], tag=100 + k[1]) for k, t in partial_in.items()}
            for q in range(1, W):  # push order: rank me-1 computes my rows right after its own
                p = (me - q) % W
                dist.send(packed[off[p]: off[p + 1]], dst=p, tag=10)
            for s in bufs:
                recvs[s].wait()
                ready[s].set()
            for _ in range(nb * (W - 1)):
                item = outbox.get(timeout=120)
                dist.send(item[2], dst=item[0], tag=100 + item[1])
            for work in pin.values():
                work.wait()
        except Exception as e:  # noqa: BLE001 - re-raised in the compute thread
            err.append(e)
            for e_ in ready.values():
                e_.set()

    th = threading.Thread(target=comm, daemon=True)
    th.start()
    acts, got = {}, {}
    for q in range(W):  # layer0: own rows first, then each source in compute order as it lands
        s = (me + q) % W
        if s != me:
            if not ready[s].wait(timeout=120) or err:
                raise RuntimeError(f"comet schedule: rows from rank {s} did not arrive: {err or 'timed out'}")
        m = packed[off[me]: off[me + 1]] if s == me else bufs[s]
        got[s] = (m[:, :H], m[:, H].long(), m[:, H + 1].long(), m[:, H + 2])
        acts[s] = r.gemm0(got[s][0], got[s][1])
    out = torch.zeros(r.s["T"], H)
    for j, c in enumerate(cols):  # layer1: block j of every source's rows, reduced, sent home; then block j+1
        for s in [*((me - q) % W for q in range(1, W)), me]:  # peers' partials first, so they leave early
            srows, sle, stok, sw = got[s]
            uniq, part = _partial(r.gemm1(acts[s], sle, c), sw, stok)
            if s == me:
                _add_block(out, uniq, c, part)
            else:
                outbox.put((s, j, part))
    th.join(timeout=120)
    if err or th.is_alive():
        raise RuntimeError(f"comet schedule: communication thread failed: {err or 'timed out'}")
    for (p, j), part in partial_in.items():
        _add_block(out, st["home_tok"][p], cols[j], part)
    return out


SCHEDULE_FNS = {"sequential": sequential, "pipelined": pipelined, "comet": comet}


def calibrate(r: Rank, reps: int = 9) -> tuple[float, float]:
    """Seconds per row of the real GEMM0 + SwiGLU and GEMM1 (median), on rows like the ones a rank gets; the
    ranks take turns, so that one rank's GEMMs do not slow the other's down, and every rank emulates the
    slowest rank's figures (one device speed, as on a node of equal GPUs)."""
    import torch.distributed as dist

    for turn in range(r.W):
        dist.barrier()
        if turn == r.me:
            got = torch.tensor(_calibrate(r, reps), dtype=torch.float64)
    dist.all_reduce(got, op=dist.ReduceOp.MAX)
    return tuple(got.tolist())


def _calibrate(r: Rank, reps: int) -> tuple[float, float]:
    n = r.s["T"] * r.s["k"]
    rows, le = torch.randn(n, r.s["H"]), torch.randint(0, r.EL, (n,))
    t0, t1 = [], []
    for _ in range(reps):
        a = time.perf_counter()
        act = r.gemm0(rows, le)
        b = time.perf_counter()
        r.gemm1(act, le)
        t0.append(b - a)
        t1.append(time.perf_counter() - b)
    return statistics.median(t0) / n, statistics.median(t1) / n


def _sleep_tail(r: Rank, n: int = 40) -> dict:
    """How late time.sleep wakes up here (p90 + 10 us becomes the spun tail of every emulated GEMM), and
    how far the emulated GEMMs then land from their target (median and worst, us)."""
    late = []
    for _ in range(n):
        a = time.perf_counter()
        time.sleep(5e-4)
        late.append(time.perf_counter() - a - 5e-4)
    r.tail = min(3e-4, max(2e-5, statistics.quantiles(late, n=10)[-1] + 1e-5))
    err = []
    for _ in range(n):
        a = time.perf_counter()
        r.sleep(5e-4)
        err.append(time.perf_counter() - a - 5e-4)
    return {"sleep_late_us": statistics.median(late) * 1e6, "tail_us": r.tail * 1e6,
            "emulated_err_us": statistics.median(err) * 1e6, "emulated_err_max_us": max(err) * 1e6}


def _common_start(margin: float = 3e-3) -> float:
    """Every rank starts at the same instant: the latest rank's clock after a barrier plus a margin (the ranks
    share one host, so perf_counter, CLOCK_MONOTONIC, is one clock); a barrier alone lets ranks leave it up to
    a message latency apart, which a per-rank stopwatch would count as layer time."""
    import torch.distributed as dist

    dist.barrier()
    t = torch.tensor([time.perf_counter()], dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    start = t.item() + margin
    if start - time.perf_counter() > 1e-3:
        time.sleep(start - time.perf_counter() - 1e-3)
    while time.perf_counter() < start:
        pass
    return start


def _timed(fns: dict, reps: int, hooks: dict | None = None) -> dict[str, list[list[float]]]:
    """Per repetition [seconds from the common start to this rank's end, how late this rank started], the
    functions interleaved (a slow spell of the machine hits all of them alike); garbage collection held off.
    `hooks[k]` = (before, after), untimed, around function k (e.g. posting a receive, waiting for it)."""
    hooks = hooks or {}
    times = {k: [] for k in fns}

    def once(k, fn):
        before, after = hooks.get(k, (None, None))
        if before:
            before()
        start = _common_start()
        late = time.perf_counter() - start
        fn()
        t = time.perf_counter() - start
        if after:
            after()
        return [t, late]

    for k, fn in fns.items():  # warm-up
        once(k, fn)
    gc.collect()
    gc.disable()
    try:
        for _ in range(reps):
            for k, fn in fns.items():
                times[k].append(once(k, fn))
    finally:
        gc.enable()
    return times


def _max_rows(rc: list[int]) -> int:
    """The busiest rank's received rows (every rank gets the same answer)."""
    import torch.distributed as dist

    t = torch.tensor([sum(rc)])
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def _parts(r: Rank, reps: int) -> dict[str, list[list[float]]]:
    """The model's primitives, each timed alone on every rank at once: all-to-all and pairwise exchange at
    the sizes the model reads, and the schedules' host steps on this rank's data."""
    import torch.distributed as dist

    from tessera.distributed.moe_perfmodel_cpu import message_bytes

    W, me, T, H, C = r.W, r.me, r.s["T"], r.s["H"], r.s["chunks"]
    tokens = torch.arange(T)
    rows, le, tok, w, counts = _plan(r, tokens)
    rc = _counts(counts)
    st = _comet_prep(r, rows, le, tok, w, counts, rc)
    chunk = _plan(r, tokens.chunk(C)[0])
    out, back, back_c = torch.zeros(T, H), torch.randn(len(tok), H), torch.randn(len(chunk[2]), H)
    own = st["packed"][st["off"][me]: st["off"][me + 1]]
    c0 = st["cols"][0]
    y = torch.randn(len(own), c0.stop - c0.start)
    uniq, part = _partial(y, own[:, H + 2], own[:, H + 1].long())

    def thread():
        ev = threading.Event()
        th = threading.Thread(target=ev.set, daemon=True)
        th.start()
        ev.wait(timeout=10)
        th.join(timeout=10)

    fns = {"host/plan": lambda: _plan(r, tokens), "host/plan_chunk": lambda: _plan(r, tokens.chunk(C)[0]),
           "host/zeros": lambda: torch.zeros(T, H), "host/combine": lambda: _combine_rows(out, tok, back, w),
           "host/combine_chunk": lambda: _combine_rows(out, chunk[2], back_c, chunk[3]),
           "host/comet_prep": lambda: _comet_prep(r, rows, le, tok, w, counts, rc),
           "host/partial": lambda: _partial(y, own[:, H + 2], own[:, H + 1].long()),
           "host/add_block": lambda: _add_block(out, uniq, c0, part), "host/thread": thread}
    sizes = message_bytes({**r.s, "world": W, "rows": _max_rows(rc)})  # the same sizes on every rank

    def a2a(nbytes):
        n = max(1, round(nbytes / 4 / W))  # fp32 elements per destination: the bytes matter, not the dtype
        send = torch.randn(W * n)
        return lambda: _a2a(send, [n] * W, [n] * W)

    def exchange(nbytes, posted: bool, send_only: bool = False):
        """What COMET's communication thread does: a blocking send to rank me-1 and the receive of rank me+1's
        message, the receive posted just before (the rows of layer0) or long before (the partial sums of
        layer1, whose receives are posted when the thread starts: no ready-to-receive round trip); timed to
        the receive's end, or (`send_only`) to the send's return, the receive waited after the clock stops."""
        n = max(1, round(nbytes / 4))
        send, recv = torch.randn(n), torch.empty(n)
        pending = []

        def post():
            pending.append(dist.irecv(recv, src=(me + 1) % W, tag=7))

        def fn():
            work = pending.pop() if posted else dist.irecv(recv, src=(me + 1) % W, tag=7)
            dist.send(send, dst=(me - 1) % W, tag=7)
            if send_only:
                pending.append(work)
            else:
                work.wait()

        def finish():  # a gloo receive is waited exactly once
            while pending:
                pending.pop().wait()
        return fn, ((post, finish) if posted else (None, None))

    # the same exchanges run by a communication thread while the main thread waits, as COMET's schedule runs
    # them (`<key>_thread/<bytes>`): the hand-off to the thread is inside the clock, as it is in the layer
    jobs: queue.Queue = queue.Queue()

    def worker():
        while (job := jobs.get()) is not None:
            f, done = job
            try:
                f()
            finally:
                done.set()

    def on_thread(f):
        def run():
            done = threading.Event()
            jobs.put((f, done))
            if not done.wait(timeout=60):
                raise RuntimeError("an exchange on the communication thread did not end within 60 s")
        return run

    fns |= {f"a2a/{int(b)}": a2a(b) for b in sizes["a2a"]}
    hooks = {}
    for key in ("p2p", "p2p_posted", "send_posted"):
        for b in sizes[key]:
            k = f"{key}/{int(b)}"
            fns[k], hooks[k] = exchange(b, key != "p2p", key == "send_posted")
            fn, hooks[f"{key}_thread/{int(b)}"] = exchange(b, key != "p2p", key == "send_posted")
            fns[f"{key}_thread/{int(b)}"] = on_thread(fn)
    th = threading.Thread(target=worker, daemon=True)
    th.start()
    try:
        return _timed(fns, reps, hooks)
    finally:
        jobs.put(None)
        th.join(timeout=10)


def _job(name: str, reps: int):
    from tessera.distributed import parallel_state as ps

    torch.set_num_threads(1)  # one core per rank
    out = {"check": {}, "timer_slack_1ns": _set_timer_slack()}
    W, me = ps.world_size(), ps.rank()
    r = Rank(SETTINGS[name], me, W)
    want = sequential(r)
    for sched in ("pipelined", "comet"):  # the schedules compute the same layer
        out["check"][sched] = (SCHEDULE_FNS[sched](r) - want).abs().max().item()
    calib = calibrate(r)
    out["per_row_s"] = calib
    out["sleep"] = _sleep_tail(r)
    for mode in ("emulated", "real"):
        r.per_row = calib if mode == "emulated" else None
        times = _timed({sched: functools.partial(SCHEDULE_FNS[sched], r) for sched in SCHEDULES}, reps)
        out |= {f"{mode}/{k}": v for k, v in times.items()}
    r.per_row = calib
    out |= _parts(r, reps)
    out["rows_received"] = _max_rows(_counts(_plan(r, torch.arange(r.s["T"]))[4]))
    return out


def summarize(per_rank: list[dict]) -> dict:
    """Per repetition the slowest rank counts: a host step ends when the slowest rank has done it (its own
    start to its end), a collective or a whole layer when the last rank is through, counted from the last
    rank's start (a rank that started late keeps the others waiting, which is not the layer's time)."""
    res = {}
    for key, v in per_rank[0].items():
        if not (isinstance(v, list) and v and isinstance(v[0], list)):
            continue
        if key.startswith("host/"):
            t = [max(r[key][i][0] - r[key][i][1] for r in per_rank) for i in range(len(v))]
        else:
            t = [max(r[key][i][0] for r in per_rank) - max(r[key][i][1] for r in per_rank) for i in range(len(v))]
        q = statistics.quantiles(t, n=4)
        res[key] = {"median_s": statistics.median(t), "q1_s": q[0], "q3_s": q[2], "min_s": min(t), "max_s": max(t),
                    "samples_s": t}
    late = [x[1] for r in per_rank for k, v in r.items() if isinstance(v, list) and v and isinstance(v[0], list)
            for x in v]
    res["start_late_us"] = {"median": statistics.median(late) * 1e6, "max": max(late) * 1e6}
    return res


def model_settings(name: str, world: int, res: dict, per_row: list[float], rows: int) -> dict:
    """The model's inputs from this run's primitives: per repetition the slowest rank's seconds."""
    samples = {k: v["samples_s"] for k, v in res.items() if isinstance(v, dict) and "samples_s" in v}

    def curve(prefix):
        return sorted([int(k.split("/")[1]), t] for k, t in samples.items() if k.startswith(prefix + "/"))
    # COMET's exchanges as its schedule runs them, on the communication thread (older runs: the main thread)
    p2p = {key: curve(f"{key}_thread") or curve(key) for key in ("p2p", "p2p_posted", "send_posted")}
    return {**SETTINGS[name], "world": world, "per_row_s": per_row, "rows": rows, "a2a_s": curve("a2a"),
            "p2p_s": p2p["p2p"], "p2p_posted_s": p2p["p2p_posted"], "send_posted_s": p2p["send_posted"],
            "host_s": {k.split("/")[1]: t for k, t in samples.items() if k.startswith("host/")}}


def model_prediction(settings: dict) -> dict:
    """The CPU performance model (`tessera.distributed.moe_perfmodel_cpu`) for the settings `model_settings`
    builds from this run's primitives: per schedule the prediction ('time': the median over resampled
    repetitions) and the parts at their medians ('median_parts', with the sum of those medians as 'time')."""
    from tessera.distributed.moe_perfmodel_cpu import breakdown, moe_overlap_prediction

    pred, parts = moe_overlap_prediction(settings), breakdown(settings)
    # diagnostic, not the prediction: the same with the point-to-point exchanges (COMET's rows and partial
    # sums) at their medians, i.e. as if those never stalled, to show where the COMET row's excess comes from
    calm = {**settings, **{k: [(b, statistics.median(t) if isinstance(t, list) else t) for b, t in settings[k]]
                           for k in ("p2p_s", "p2p_posted_s", "send_posted_s")}}
    calm_pred = moe_overlap_prediction(calm)
    return {k: {"time": pred[k], "median_parts": parts[k], "p2p_calm": calm_pred[k]} for k in pred}


def _ms(v: dict) -> str:
    return f"{v['median_s'] * 1e3:.2f} [{v['q1_s'] * 1e3:.2f}, {v['q3_s'] * 1e3:.2f}]"


def write_md(path: str, doc: dict) -> None:
    L = [f"# MoE layer overlap on this CPU ({doc['machine']}, {doc['world']} gloo ranks, 1 thread each)", "",
         f"Run {doc['when']} (load average {doc['loadavg']:.1f} at start), torch {doc['torch']}, {doc['reps']} "
         "repetitions, the schedules interleaved; every repetition starts all ranks at one instant and counts the "
         "slowest rank; median [q1, q3] in ms. Ratios are against `sequential` in the same mode and run. "
         "`emulated`: compute replaced by sleeps calibrated to the real GEMMs of the same rows (the slowest "
         "rank's, this run); `real`: real fp32 GEMMs on cores that gloo shares. `model`: "
         "`tessera.distributed.moe_perfmodel_cpu` from the primitives below, each timed alone in this run.", ""]
    if doc["loadavg"] > os.cpu_count():
        L += [f"**The machine was loaded** (load average {doc['loadavg']:.1f} on {os.cpu_count()} cores, other jobs): a "
              "sleeping rank wakes up late and gloo's threads wait for a core, so every time here is inflated and "
              "noisy; read the ratios as indicative, not as this method's value.", ""]
    for name, r in doc["results"].items():
        s, sl = SETTINGS[name], r["sleep"]
        L += [f"## {name}: {s}", "",
              f"Calibrated compute per rank: GEMM0+SwiGLU {r['calibrated']['gemm0_ms']:.2f} ms, GEMM1 "
              f"{r['calibrated']['gemm1_ms']:.2f} ms over {r['calibrated']['rows']} rows. Emulated GEMMs: sleep "
              f"wakes {sl['sleep_late_us']:.0f} us late (timer slack 1 ns: {r['timer_slack_1ns']}), the last "
              f"{sl['tail_us']:.0f} us are spun, landing {sl['emulated_err_us']:.1f} us late (median, worst "
              f"{sl['emulated_err_max_us']:.0f} us). Ranks started {r['start_late_us']['median']:.0f} us (median; worst "
              f"{r['start_late_us']['max']:.0f} us) after the common instant. Real-compute outputs vs sequential: max |diff| "
              + ", ".join(f"{k} {v:.1e}" for k, v in r["check"].items()) + ".", "",
              "| mode | schedule | median ms | [q1, q3] ms | min ms | vs sequential (medians) | model ms | model / measured "
              "| sum of median parts ms |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for mode in ("emulated", "real"):
            base = r[f"{mode}/sequential"]["median_s"]
            for sched in SCHEDULES:
                v = r[f"{mode}/{sched}"]
                m = r["model"][sched] if mode == "emulated" else None
                L.append(f"| {mode} | {sched} | {v['median_s'] * 1e3:.2f} | [{v['q1_s'] * 1e3:.2f}, {v['q3_s'] * 1e3:.2f}] "
                         f"| {v['min_s'] * 1e3:.2f} | {base / v['median_s']:.2f}x | "
                         + ("- | - | - |" if m is None else f"{m['time'] * 1e3:.2f} | {m['time'] / v['median_s']:.2f} | "
                            f"{m['median_parts']['time'] * 1e3:.2f} |"))
        L += ["", "Primitives (each alone, both ranks at once, slowest rank), ms median [q1, q3]: "
              + "; ".join(f"`{k}` {_ms(v)}" for k, v in r.items() if k.startswith(("host/", "a2a/", "p2p", "send_posted")))
              + " (a2a/p2p keys: bytes sent per rank; `_thread`: run by a communication thread while the main thread "
              "waits, as COMET's schedule runs them, and what the model reads when present).", "",
              "Model parts at the primitives' medians, ms: " + "; ".join(
                  f"{sched}: " + ", ".join(f"{k} {t * 1e3:.2f}" for k, t in m["median_parts"].items() if k != "time")
                  for sched, m in r["model"].items()) + ".", ""]
        if all("p2p_calm" in m for m in r["model"].values()):
            L += ["Diagnostic, not the prediction: the model with the three point-to-point primitives (`p2p`, "
                  "`p2p_posted`, `send_posted`) at their medians, as if they never stalled, model / measured: " + ", ".join(
                      f"{sched} {m['p2p_calm'] / r[f'emulated/{sched}']['median_s']:.2f}" for sched, m in r["model"].items())
                  + ".", ""]
    if doc.get("remodelled"):
        L += [f"The model columns were recomputed {doc['remodelled']} from this run's primitives (`--remodel`): the model "
              "changed, the measurements did not.", ""]
    L += ["## Notes", "", *doc["notes"]]
    with open(path, "w") as fh:
        fh.write("\n".join(L) + "\n")


NOTES = [
    "- `emulated` is the question COMET asks: with the cores free during compute (sleeps), how much of the "
    "communication does each order hide? `real` shows what 2 cores do: compute and gloo's transfers compete for "
    "the same cores, so no schedule can hide anything and extra steps only cost.",
    "- The COMET row is the fused kernels' order expressed with torch.distributed and one communication thread "
    "(the n_c programs), not the Triton kernels, which run interpreted on a CPU (tests/test_comet.py checks "
    "their numerics and order; scripts/gpu_checks/comet.py runs them compiled).",
    "- Model column: `tessera.distributed.moe_perfmodel_cpu.moe_overlap_prediction` composed from the primitives "
    "of the same run (GEMM seconds per row, all-to-all and exchange times at the schedules' message sizes, the "
    "host steps), never from a schedule's own total: the median of layers composed from resampled repetitions of "
    "each step; 'sum of median parts' composes the steps' medians instead (the steps are heavy-tailed: on this VM "
    "a hand-off between threads or processes often waits about one 4 ms kernel tick). docs/comet.md explains "
    "each schedule's formula.",
    "- gloo over loopback is ~100x slower per byte than NVLink and a GPU's GEMMs ~100x faster than one core: the "
    "ratio of communication to compute here was chosen, not inherited from any GPU setting.",
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--world", type=int, default=2)
    ap.add_argument("--reps", type=int, default=41)
    ap.add_argument("--settings", default=",".join(SETTINGS))
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    ap.add_argument("--remodel", action="store_true",
                    help="measure nothing: recompute the model columns of <out>/moe_overlap_cpu.json from its primitives")
    args = ap.parse_args()
    if args.remodel:
        with open(os.path.join(args.out, "moe_overlap_cpu.json")) as fh:
            doc = json.load(fh)
        for res in doc["results"].values():
            res["model"] = model_prediction(res["model_settings"])
        doc["remodelled"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        save_result(args.out, "moe_overlap_cpu", doc, write_md)
        return
    from tessera.distributed.testing import RankPool  # test- and benchmark-only

    loadavg = os.getloadavg()[0]
    pool = RankPool(args.world, gloo_timeout_s=300)
    results = {}
    try:
        for name in args.settings.split(","):
            per_rank = pool.run(_job, name, args.reps, timeout=3600)
            res = summarize(per_rank)
            g0, g1 = per_rank[0]["per_row_s"]  # every rank emulates the slowest rank's calibration
            rows = max(r["rows_received"] for r in per_rank)
            res["calibrated"] = {"gemm0_ms": g0 * rows * 1e3, "gemm1_ms": g1 * rows * 1e3, "rows": rows,
                                 "per_row_s": [g0, g1]}
            res["check"] = {k: max(r["check"][k] for r in per_rank) for k in per_rank[0]["check"]}
            res["sleep"] = {k: max(r["sleep"][k] for r in per_rank) for k in per_rank[0]["sleep"]}
            res["timer_slack_1ns"] = all(r["timer_slack_1ns"] for r in per_rank)
            res["model_settings"] = model_settings(name, args.world, res, [g0, g1], rows)
            res["model"] = model_prediction(res["model_settings"])
            results[name] = res
    finally:
        pool.stop()
    torch.set_num_threads(1)
    doc = {"machine": describe(), "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "torch": torch.__version__,
           "world": args.world, "reps": args.reps, "loadavg": loadavg, "settings": SETTINGS, "results": results,
           "notes": NOTES}
    save_result(args.out, "moe_overlap_cpu", doc, write_md)


if __name__ == "__main__":
    main()
