"""Time model of one expert-parallel MoE layer on CPU ranks (gloo), composed from primitives measured in
isolation: the entry point `benchmarks/bench_moe_overlap.py` compares with its emulated-compute runs.

The three schedules are the benchmark's (sequential; Tutel / FasterMoE token chunks, arXiv 2206.03382;
COMET's order, arXiv 2502.19811, with one communication thread standing in for the fused kernels' n_c
communication programs). Nothing here is fitted to a schedule's own total: every input is one step timed
alone on W ranks from a common start (slowest rank, median), and the model adds the steps in the order the
schedule's code runs them, overlapping what the code overlaps:

- compute: seconds per row of GEMM0 + SwiGLU and of GEMM1 (`per_row_s`) times the rows (`rows`, the busiest
  rank's received rows; every source sends rows / W of them), emulated by sleeps of exactly that length;
- communication: `all_to_all_single` and a pairwise exchange (pre-posted irecv + send) as time against bytes
  sent per rank, interpolated between the measured sizes (`a2a_s`, `p2p_s`: [[bytes, s], ...], taken at
  the sizes the schedules send, so interpolation is nearly a lookup);
- host work (`host_s`, seconds): `plan` / `plan_chunk` (sort the rows by destination and gather them, all
  tokens / one chunk), `zeros` (the [T, H] output), `combine` / `combine_chunk` (weighting and
  `index_add` of the returned rows, all / one chunk), `comet_prep` (COMET's packing of rows, expert ids,
  tokens and weights into one message per peer, the receive buffers, the home token lists), `partial` (one
  source's column-block top-k partial sums: unique + index_add), `add_block` (adding one block of partial
  sums into the output), `thread` (start, hand-off and join of the communication thread).

Schedules (R rows, W ranks, C chunks, n_b column blocks; a2a(b) and p2p(b) the measured curves):

- sequential: plan + a2a(counts) + a2a(rows) + a2a(expert ids) + (g0 + g1) R + a2a(results) + zeros
  + combine;
- pipelined: C plans and C count exchanges, then two servers: the main thread computes chunk i when its
  dispatch has landed, and gloo's queue runs the all-to-alls in the order they are posted (d0, d1, b0, d2,
  b1, ...: chunk i+1's dispatch is posted before chunk i computes, chunk i's combine after); then the C
  reductions as each combine lands (`_pipelined_end`);
- COMET order: plan + a2a(counts) + comet_prep + thread; layer0 computes its own R / W rows first and each
  peer's R / W rows when they have arrived (the peers push in the order the receiver computes, one
  exchange of R / W packed rows after another): `layer0_end` of `moe_perfmodel`; layer1 computes block j
  of the peers' rows (GEMM1 slice + partial sums), hands them to the communication thread, then block j of
  its own rows (+ add_block), so the thread sends block j while block j + 1 computes. With G the main
  thread's time per block, G_own its own-rows part and c = (W - 1) p2p(partial bytes) the thread's:
  T1 = max(n_b G, flow_shop2(G, c, n_b) - G_own) (the send of block j starts G_own before the block's end,
  and the compute of the last block may outlast the last send); then (W - 1) n_b add_blocks of the
  partial sums received. For W > 2 the peers' partial sums of a block are treated as one send stage.

Not modelled: contention between the ranks' host work and gloo's threads for the cores (the measured
primitives already run both ranks at once), the GIL hand-offs between COMET's two threads beyond the one
measured in `thread`, and routing skew (the rows come from the measured run).
"""

from __future__ import annotations

from collections.abc import Sequence

from tessera.distributed.moe_perfmodel import MoEShape, flow_shop2, layer0_end, topk_rows_after_local_reduce

HOST_PARTS = ("plan", "plan_chunk", "zeros", "combine", "combine_chunk", "comet_prep", "partial", "add_block",
              "thread")
KEYS = ("T", "k", "E", "H", "world", "chunks", "blocks", "per_row_s", "rows", "a2a_s", "p2p_s", "host_s")
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
    exactly these: all-to-all of the counts, of the expert ids and of the rows (whole and per chunk);
    the exchange of one peer's packed rows and of one column block's partial sums (plus one row, the
    latency end of the curve)."""
    W, R, H, C = s["world"], float(s["rows"]), s["H"], s["chunks"]
    return {"a2a": sorted({ID_BYTES * W, ID_BYTES * R / C, ID_BYTES * R, FP32 * H * R / C, FP32 * H * R}),
            "p2p": sorted({FP32 * H, FP32 * (H + 3) * R / W, FP32 * _home_tokens(s) * H / s["blocks"]})}


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


def _pipelined_end(host0: float, d: float, g: float, b: float, reduce: float, chunks: int) -> float:
    """The chunk loop of the pipelined schedule as a list schedule: one compute server (the main thread),
    one communication server (gloo's queue, in posting order), chunk i's compute after its dispatch, its
    combine after its compute, and the reductions after the last compute as each combine lands."""
    t = host0
    comm = d_end = host0 + d  # chunk 0's dispatch, posted first
    b_end = []
    for i in range(chunks):
        if i + 1 < chunks:
            comm = next_d = max(comm, t) + d  # chunk i+1's dispatch, posted before chunk i computes
        t = max(t, d_end) + g
        comm = max(comm, t) + b  # chunk i's combine, posted after its compute
        b_end.append(comm)
        d_end = next_d if i + 1 < chunks else d_end
    for e in b_end:
        t = max(t, e) + reduce
    return t


def layer1_end(G: float, g_own: float, c: float, blocks: int) -> float:
    """COMET order's layer1 on the main thread and the communication thread: per block the main thread
    computes the peers' part (G - g_own), hands it over, then its own part (g_own); the thread sends each
    block (c) in order. Block j's send is released at j G + G - g_own, so the sends end at
    flow_shop2(G, c, blocks) - g_own; the main thread ends at blocks G."""
    return max(blocks * G, flow_shop2(G, c, blocks) - g_own)


def breakdown(settings: dict) -> dict:
    """Per schedule: the predicted seconds ('time') and the parts it adds (seconds), for the tables."""
    _check(settings)
    s, h = settings, settings["host_s"]
    W, R, H, C, nb = s["world"], float(s["rows"]), s["H"], s["chunks"], s["blocks"]
    g0, g1 = s["per_row_s"]
    a2a = lambda nbytes: interp(s["a2a_s"], nbytes)  # noqa: E731
    p2p = lambda nbytes: interp(s["p2p_s"], nbytes)  # noqa: E731
    counts = a2a(ID_BYTES * W)

    seq = {"plan": h["plan"], "counts": counts, "dispatch": a2a(FP32 * H * R) + a2a(ID_BYTES * R),
           "gemm0": g0 * R, "gemm1": g1 * R, "combine_a2a": a2a(FP32 * H * R),
           "reduce": h["zeros"] + h["combine"]}
    seq["time"] = sum(seq.values())

    Rc = R / C
    d, b = a2a(FP32 * H * Rc) + a2a(ID_BYTES * Rc), a2a(FP32 * H * Rc)
    host0 = C * (h["plan_chunk"] + counts)
    pipe = {"plans_counts": host0, "chunk_dispatch": d, "chunk_compute": (g0 + g1) * Rc, "chunk_combine": b,
            "reduce": h["zeros"] + C * h["combine_chunk"]}
    pipe["time"] = h["zeros"] + _pipelined_end(host0, d, (g0 + g1) * Rc, b, h["combine_chunk"], C)

    Rs = R / W  # rows from each source
    home = _home_tokens(s)
    x0 = p2p(FP32 * (H + 3) * Rs)  # rows + expert id, token, weight as one fp32 message per peer
    prep = h["plan"] + counts + h["comet_prep"] + h["thread"]
    t0 = layer0_end(g0 * Rs, [j * x0 for j in range(W)])
    g_src = g1 * Rs / nb + h["partial"]
    g_own = g_src + h["add_block"]
    G = (W - 1) * g_src + g_own
    c = (W - 1) * p2p(FP32 * home * H / nb)
    t1 = layer1_end(G, g_own, c, nb)
    final = (W - 1) * nb * h["add_block"]
    cm = {"prep": prep, "layer0": t0, "layer1": t1, "final_adds": final, "rows_exchange": x0, "block_send": c,
          "gemm0": g0 * R, "gemm1": g1 * R}
    cm["time"] = prep + t0 + t1 + final
    return {"sequential": seq, "pipelined": pipe, "comet": cm}


def moe_overlap_prediction(settings: dict) -> dict:
    """{"sequential", "pipelined", "comet"}: predicted seconds of one layer for the benchmark's settings
    (keys in `KEYS`, host parts in `HOST_PARTS`; see the module docstring)."""
    return {k: v["time"] for k, v in breakdown(settings).items()}
