"""Time model of one expert-parallel MoE layer on CPU ranks (gloo), composed from primitives measured in
isolation: the entry point `benchmarks/bench_moe_overlap.py` compares with its emulated-compute runs.

The three schedules are the benchmark's (sequential; Tutel / FasterMoE token chunks, arXiv 2206.03382;
COMET's order, arXiv 2502.19811, with one communication thread standing in for the fused kernels' n_c
communication programs). Nothing here is fitted to a schedule's own total: every input is one step timed
alone on W ranks at once (slowest rank, per repetition), and the model adds the steps in the order the
schedule's code runs them, overlapping what the code overlaps:

- compute: seconds per row of GEMM0 + SwiGLU and of GEMM1 (`per_row_s`) times the rows (`rows`, the busiest
  rank's received rows; every source sends rows / W of them), emulated by sleeps of exactly that length;
- communication, as [[bytes sent per rank, seconds], ...] at the sizes `message_bytes` names (so the
  piecewise-linear `interp` between them is nearly a lookup): `a2a_s` (`all_to_all_single`), `p2p_s` (a send
  to rank me-1 and the receive from me+1, the receive posted just before: COMET's rows), `send_posted_s`
  (the blocking send alone, the peer's receive posted long before: COMET's partial sums) and `p2p_posted_s`
  (until such a message has landed);
- host work (`host_s`): `plan` / `plan_chunk` (sort the rows by destination and gather them, all tokens /
  one chunk), `zeros` (the [T, H] output), `combine` / `combine_chunk` (weighting and `index_add` of the
  returned rows, all / one chunk), `comet_prep` (COMET's packing of rows, expert ids, tokens and weights
  into one message per peer, the receive buffers, the home token lists), `partial` (one source's
  column-block top-k partial sums: unique + index_add), `add_block` (adding one block of partial sums into
  the output), `thread` (start, hand-off and join of the communication thread).

Every input is a number or a list of per-repetition samples. The steps are heavy-tailed on a small VM
(hand-offs between threads and processes either take ~0.1 ms or wait ~one 4 ms kernel tick), so the median
of a layer is above the sum of its steps' medians: with samples, `moe_overlap_prediction` draws a fresh
repetition for every step, composes 2,000 layers and returns their median; `breakdown` composes medians.

Schedules (R rows, W ranks, C chunks, n_b column blocks):

- sequential: plan + a2a(counts) + a2a(rows) + a2a(expert ids) + (g0 + g1) R + a2a(results) + zeros
  + combine;
- pipelined: C plans and C count exchanges, then two servers: the main thread computes chunk i when its
  dispatch has landed, and gloo's queue runs the all-to-alls in the order they are posted (d0, d1, b0, d2,
  b1, ...: chunk i+1's dispatch is posted before chunk i computes, chunk i's combine after); a chunk's rows
  and expert ids are posted together and run on gloo's two worker threads at once (d = the longer); then the
  C reductions as each combine lands (`_pipelined_end`);
- COMET order: plan + a2a(counts) + comet_prep; layer0 computes its own R / W rows first and each peer's
  R / W rows when they have arrived (the thread starts, then the peers push in the order the receiver
  computes, one exchange after another): `layer0_end` of `moe_perfmodel`; layer1 computes block j of the
  peers' rows (GEMM1 slice + partial sums), hands them to the communication thread, then block j of its own
  rows (+ add_block), so the thread sends block j while block j + 1 computes (`layer1_end`, a two-stage
  list schedule); then (W - 1) n_b add_blocks of the partial sums received. For W > 2 the peers' partial
  sums of a block are treated as one send stage.

Not modelled: contention between the ranks' host work and gloo's threads for the cores beyond what the
primitives met when timed alone (both ranks at once), a different rate of stalled hand-offs inside a layer
than alone, and routing skew (the rows come from the measured run).
"""

from __future__ import annotations

import random
import statistics
from collections.abc import Sequence

from tessera.distributed.moe_perfmodel import MoEShape, layer0_end, topk_rows_after_local_reduce

HOST_PARTS = ("plan", "plan_chunk", "zeros", "combine", "combine_chunk", "comet_prep", "partial", "add_block",
              "thread")
CURVES = ("a2a_s", "p2p_s", "p2p_posted_s", "send_posted_s")
KEYS = ("T", "k", "E", "H", "world", "chunks", "blocks", "per_row_s", "rows", *CURVES, "host_s")
FP32, ID_BYTES = 4, 8  # rows travel as fp32, expert ids and counts as int64


def interp(points: Sequence[Sequence[float]], x: float) -> float:
    """Piecewise-linear seconds at `x` bytes through measured (bytes, seconds) points (at least two sizes):
    the smallest size's time below it (a message costs at least its latency), the last segment's slope
    (never negative) above the largest."""
    pts = sorted((float(b), float(t)) for b, t in points)
    if len(pts) < 2 or len({b for b, _ in pts}) < len(pts):
        raise ValueError(f"interp: need measurements at two or more distinct sizes, got {pts}")
    if x <= pts[0][0]:
        return pts[0][1]
    for (b0, t0), (b1, t1) in zip(pts, pts[1:]):
        if x <= b1:
            return t0 + (t1 - t0) * (x - b0) / (b1 - b0)
    return t1 + max(0.0, (t1 - t0) / (b1 - b0)) * (x - b1)


def message_bytes(s: dict) -> dict[str, list[float]]:
    """The sizes (bytes sent per rank) at which the model reads its curves, so that a benchmark measures
    exactly these: all-to-all of the counts, of the expert ids and of the rows (whole and per chunk); the
    exchange of one peer's packed rows (receive posted just before) and the send of one column block's
    partial sums (receive posted long before: the blocking send alone, and until the peer's sums have landed);
    one row as the latency end of the exchange curves."""
    W, R, H, C = s["world"], float(s["rows"]), s["H"], s["chunks"]
    return {"a2a": sorted({ID_BYTES * W, ID_BYTES * R / C, ID_BYTES * R, FP32 * H * R / C, FP32 * H * R}),
            "p2p": sorted({FP32 * H, FP32 * (H + 3) * R / W}),
            "p2p_posted": sorted({FP32 * H, FP32 * _home_tokens(s) * H / s["blocks"]}),
            "send_posted": sorted({FP32 * H, FP32 * _home_tokens(s) * H / s["blocks"]})}


def _home_tokens(s: dict) -> float:
    """Tokens of one rank with at least one of their top-k experts on a given peer (uniform routing): the
    rows of partial sums that peer sends back per column block."""
    shape = MoEShape("cpu", s["H"], 1, s["E"], s["k"], FP32)
    return s["T"] * topk_rows_after_local_reduce(shape, s["world"]) * s["k"] / s["world"]


def _check(settings: dict) -> None:
    missing = [k for k in KEYS if k not in settings]
    missing += [f"host_s.{k}" for k in HOST_PARTS if k not in settings.get("host_s", {})]
    if missing:
        raise ValueError(f"moe_overlap_prediction: settings lack {', '.join(missing)}")
    if settings["world"] < 2 or settings["chunks"] < 1 or settings["blocks"] < 1 or settings["rows"] < 0:
        raise ValueError(f"moe_overlap_prediction: need world >= 2, chunks >= 1, blocks >= 1, rows >= 0; got "
                         f"{settings['world']}, {settings['chunks']}, {settings['blocks']}, {settings['rows']}")


def _per(x, n: int) -> list:
    """One value per chunk or block: a list as it is, a number repeated n times."""
    return list(x) if isinstance(x, (list, tuple)) else [x] * n


def _pipelined_end(host0: float, d, g: float, b, reduce, chunks: int) -> float:
    """The chunk loop of the pipelined schedule as a list schedule: one compute server (the main thread),
    one communication server (gloo's queue, in posting order), chunk i's compute after its dispatch, its
    combine after its compute, and the reductions after the last compute as each combine lands. d, b, reduce:
    one number for every chunk, or one per chunk."""
    d, b, reduce = (_per(x, chunks) for x in (d, b, reduce))
    t = host0
    comm = d_end = host0 + d[0]  # chunk 0's dispatch, posted first
    b_end = []
    for i in range(chunks):
        if i + 1 < chunks:
            comm = next_d = max(comm, t) + d[i + 1]  # chunk i+1's dispatch, posted before chunk i computes
        t = max(t, d_end) + g
        comm = max(comm, t) + b[i]  # chunk i's combine, posted after its compute
        b_end.append(comm)
        d_end = next_d if i + 1 < chunks else d_end
    for e, r in zip(b_end, reduce):
        t = max(t, e) + r
    return t


def layer1_end(G, g_own, c, blocks: int, deliver=None) -> float:
    """COMET order's layer1 on the main thread and the communication thread: per block the main thread
    computes the peers' part (G - g_own), hands it over, then its own part (g_own); the thread sends each
    block (c) in order, each once it is handed over and the previous send is done. `deliver` (default c):
    how long after the last send starts its partial sums have landed at home (a send returns once the bytes
    are handed to the socket; the receiver's thread still has to read them). G, g_own, c: one number for
    every block, or one per block."""
    G, g_own, c = (_per(x, blocks) for x in (G, g_own, c))
    deliver = c[-1] if deliver is None else max(c[-1], deliver)
    t = send_end = start = 0.0
    for j in range(blocks):
        release = t + G[j] - g_own[j]
        t += G[j]
        start = max(send_end, release)
        send_end = start + c[j]
    return max(t, start + deliver)


def _quantile(xs, u: float | None) -> float:
    """A scalar input as it is; sorted per-repetition samples at quantile u (their median when u is None)."""
    if not isinstance(xs, list):
        return float(xs)
    if u is None:
        n = len(xs)
        return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2
    return xs[min(len(xs) - 1, int(u * len(xs)))]


def _sorted(v):
    if isinstance(v, (list, tuple)):
        if not v:
            raise ValueError("moe_overlap_prediction: an input has no samples")
        return sorted(float(x) for x in v)
    return float(v)


def _has_samples(s: dict) -> bool:
    return any(isinstance(t, (list, tuple)) for k in CURVES for _, t in s[k]) or any(
        isinstance(v, (list, tuple)) for v in s["host_s"].values())


class _Inputs:
    """The measured primitives, read at their medians (rng None) or, per use, at a fresh random quantile
    (one draw per step of a schedule: a resampled repetition)."""

    def __init__(self, s: dict, rng=None):
        self.rng = rng
        self.s = {k: [(b, _sorted(t)) for b, t in s[k]] for k in CURVES}
        self.s["host_s"] = {k: _sorted(v) for k, v in s["host_s"].items()}

    def _u(self):
        return None if self.rng is None else self.rng.random()

    def curve(self, key: str, nbytes: float) -> float:
        u = self._u()
        return interp([(b, _quantile(t, u)) for b, t in self.s[key]], nbytes)

    def host(self, name: str) -> float:
        return _quantile(self.s["host_s"][name], self._u())


def _compose(s: dict, m: _Inputs) -> dict:
    W, R, H, C, nb = s["world"], float(s["rows"]), s["H"], s["chunks"], s["blocks"]
    g0, g1 = s["per_row_s"]
    a2a = lambda nbytes: m.curve("a2a_s", nbytes)  # noqa: E731

    seq = {"plan": m.host("plan"), "counts": a2a(ID_BYTES * W),
           "dispatch": a2a(FP32 * H * R) + a2a(ID_BYTES * R), "gemm0": g0 * R, "gemm1": g1 * R,
           "combine_a2a": a2a(FP32 * H * R), "reduce": m.host("zeros") + m.host("combine")}
    seq["time"] = sum(seq.values())

    Rc = R / C
    # a chunk's rows and expert ids are posted together and run on gloo's two worker threads at once; every
    # chunk's transfers and reduction draw their own repetition
    d = [max(a2a(FP32 * H * Rc), a2a(ID_BYTES * Rc)) for _ in range(C)]
    b = [a2a(FP32 * H * Rc) for _ in range(C)]
    host0 = sum(m.host("plan_chunk") + a2a(ID_BYTES * W) for _ in range(C))
    zeros, red = m.host("zeros"), [m.host("combine_chunk") for _ in range(C)]
    pipe = {"plans_counts": host0, "chunk_dispatch": sum(d) / C, "chunk_compute": (g0 + g1) * Rc,
            "chunk_combine": sum(b) / C, "reduce": zeros + sum(red)}
    pipe["time"] = zeros + _pipelined_end(host0, d, (g0 + g1) * Rc, b, red, C)

    Rs = R / W  # rows from each source
    x0 = m.curve("p2p_s", FP32 * (H + 3) * Rs)  # rows + expert id, token, weight: one fp32 message per peer
    thread = m.host("thread")  # the communication thread starts (and is joined) while the own rows compute
    prep = m.host("plan") + a2a(ID_BYTES * W) + m.host("comet_prep")
    t0 = layer0_end(g0 * Rs, [0.0] + [thread + j * x0 for j in range(1, W)])
    pb = FP32 * _home_tokens(s) * H / nb  # one block of partial sums for one peer
    G, g_own, c = [], [], []
    for _ in range(nb):  # every block's host steps and sends draw their own repetition
        peers = sum(g1 * Rs / nb + m.host("partial") for _ in range(W - 1))
        own = g1 * Rs / nb + m.host("partial") + m.host("add_block")
        G.append(peers + own)
        g_own.append(own)
        c.append(sum(m.curve("send_posted_s", pb) for _ in range(W - 1)))
    c_last = c[-1] / (W - 1)
    t1 = layer1_end(G, g_own, c, nb, deliver=c[-1] - c_last + m.curve("p2p_posted_s", pb))
    final = sum(m.host("add_block") for _ in range((W - 1) * nb))
    cm = {"prep": prep, "layer0": t0, "layer1": t1, "final_adds": final, "rows_exchange": x0,
          "block_send": sum(c) / nb, "gemm0": g0 * R, "gemm1": g1 * R}
    cm["time"] = prep + t0 + t1 + final
    return {"sequential": seq, "pipelined": pipe, "comet": cm}


def breakdown(settings: dict) -> dict:
    """Per schedule: the seconds ('time') and the parts it adds, every primitive at its median."""
    _check(settings)
    return _compose(settings, _Inputs(settings))


def moe_overlap_prediction(settings: dict, draws: int = 2000, seed: int = 0) -> dict:
    """{"sequential", "pipelined", "comet"}: predicted median seconds of one layer for the benchmark's
    settings (keys in `KEYS`, host parts in `HOST_PARTS`; see the module docstring). Inputs given as
    per-repetition samples are resampled: each step of a schedule draws its own repetition, `draws` times,
    and the median of the composed totals is returned (the steps' times are heavy-tailed, so the median of
    a sum lies above the sum of the medians); scalar inputs give the same as `breakdown`."""
    _check(settings)
    if not _has_samples(settings):
        return {k: v["time"] for k, v in breakdown(settings).items()}
    rng = random.Random(seed)
    totals = [_compose(settings, _Inputs(settings, rng)) for _ in range(draws)]
    return {k: statistics.median(t[k]["time"] for t in totals) for k in ("sequential", "pipelined", "comet")}
