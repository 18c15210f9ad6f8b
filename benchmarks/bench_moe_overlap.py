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
real GEMMs of the same rows (measured per rank in the same run, per row of each GEMM), so that the cores are
free for the transfers, as a GPU's copy engines / NVLink are. Every schedule's real-compute output is
checked against the sequential one.

Model hook: if `tessera.distributed.moe_perfmodel` (or `perfmodel`) defines `moe_overlap_prediction(settings:
dict) -> dict` (the MoE performance model is built separately and, so far, only for GPU nodes), its {"sequential", "pipelined", "comet"} seconds for the settings
and the calibrated parts recorded here (per-row GEMM times, the measured all-to-all times) are printed beside
the emulated measurements; otherwise the table says that no model was available.

    PYTHONPATH=. python benchmarks/bench_moe_overlap.py [--world 2] [--reps 9]
Writes benchmarks/results/moe_overlap_cpu.{json,md}.
"""

from __future__ import annotations

import argparse
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

    def gemm0(self, rows: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:  # [n, H] -> [n, I]
        if self.per_row:
            time.sleep(self.per_row[0] * len(rows))
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
            time.sleep(self.per_row[1] * len(act) * width / self.s["H"])
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


def sequential(r: Rank, tokens=None) -> torch.Tensor:
    tokens = torch.arange(r.s["T"]) if tokens is None else tokens
    rows, le, tok, w, counts = _plan(r, tokens)
    rc = _counts(counts)
    got, _ = _a2a(rows, counts.tolist(), rc)
    ge, _ = _a2a(le, counts.tolist(), rc)
    y = r.gemm1(r.gemm0(got, ge), ge)
    back, _ = _a2a(y, rc, counts.tolist())
    return torch.zeros(r.s["T"], r.s["H"]).index_add_(0, tok, back * w[:, None])


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
        out.index_add_(0, p[2], back * p[3][:, None])
    return out


def comet(r: Rank) -> torch.Tensor:
    """COMET's order; a communication thread does every send and receive (the fused kernels' n_c programs)."""
    import torch.distributed as dist

    W, me, H, nb = r.W, r.me, r.s["H"], r.s["blocks"]
    rows, le, tok, w, counts = _plan(r, torch.arange(r.s["T"]))
    rc = _counts(counts)  # [W] rows from each source
    off = [0, *torch.cumsum(counts, 0).tolist()]
    # home: my tokens held by each peer (sorted, as the expert rank groups them), to receive their partials
    home_tok = [tok[off[p]: off[p + 1]].unique() for p in range(W)]
    cols = [slice(int(c[0]), int(c[-1]) + 1) for c in torch.arange(H).chunk(nb)]
    # rows, their local expert, token and weight travel as one message per peer (the kernels push all four)
    packed = torch.cat([rows, le[:, None].float(), tok[:, None].float(), w[:, None]], 1)  # ids < 2^24: exact
    bufs = {s: torch.empty(rc[s], H + 3) for s in range(W) if s != me}
    partial_in = {(p, j): torch.empty(len(home_tok[p]), c.stop - c.start) for p in range(W) if p != me
                  for j, c in enumerate(cols)}
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
                item = outbox.get()
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
            ready[s].wait()
            if err:
                raise err[0]
        m = packed[off[me]: off[me + 1]] if s == me else bufs[s]
        got[s] = (m[:, :H], m[:, H].long(), m[:, H + 1].long(), m[:, H + 2])
        acts[s] = r.gemm0(got[s][0], got[s][1])
    out = torch.zeros(r.s["T"], H)
    for j, c in enumerate(cols):  # layer1: block j of every source's rows, reduced, sent home; then block j+1
        for s in [*((me - q) % W for q in range(1, W)), me]:  # peers' partials first, so they leave early
            srows, sle, stok, sw = got[s]
            y = r.gemm1(acts[s], sle, c) * sw[:, None]
            uniq, pos = stok.unique(return_inverse=True)
            part = torch.zeros(len(uniq), c.stop - c.start).index_add_(0, pos, y)
            if s == me:
                out[uniq, c] += part
            else:
                outbox.put((s, j, part))
    th.join(timeout=120)
    if err or th.is_alive():
        raise RuntimeError(f"comet schedule: communication thread failed: {err or 'timed out'}")
    for (p, j), part in partial_in.items():
        out[home_tok[p], cols[j]] += part
    return out


def calibrate(r: Rank, reps: int = 9) -> tuple[float, float]:
    """Seconds per row of this rank's real GEMM0 + SwiGLU and GEMM1 (median), on rows like the ones it gets;
    the ranks take turns, so that one rank's GEMMs do not slow the other's down."""
    import torch.distributed as dist

    for turn in range(r.W):
        dist.barrier()
        if turn == r.me:
            got = _calibrate(r, reps)
    return got


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


def _job(name: str, reps: int):
    import torch.distributed as dist

    from tessera.distributed import parallel_state as ps

    torch.set_num_threads(1)  # one core per rank
    W, me = ps.world_size(), ps.rank()
    r = Rank(SETTINGS[name], me, W)
    out = {"check": {}}
    want = sequential(r)
    for sched in ("pipelined", "comet"):  # the schedules compute the same layer
        out["check"][sched] = (globals()[sched](r) - want).abs().max().item()
    calib = calibrate(r)
    out["per_row_s"] = calib
    rows, le, _, _, counts = _plan(r, torch.arange(r.s["T"]))
    rc = _counts(counts)
    parts = {"dispatch": lambda: _a2a(rows, counts.tolist(), rc),
             "combine": lambda: _a2a(torch.empty(sum(rc), r.s["H"]), rc, counts.tolist())}
    for mode in ("emulated", "real"):
        r.per_row = calib if mode == "emulated" else None
        for sched in SCHEDULES:
            fn = globals()[sched]
            fn(r)  # warm-up
            times = []
            for _ in range(reps):
                dist.barrier()
                t0 = time.perf_counter()
                fn(r)
                times.append(time.perf_counter() - t0)
            out[f"{mode}/{sched}"] = times
    for key, fn in parts.items():
        times = []
        for _ in range(reps):
            dist.barrier()
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        out[f"parts/{key}"] = times
    out["rows_received"] = sum(rc)
    return out


def summarize(per_rank: list[dict]) -> dict:
    """Per repetition the slowest rank counts (the layer ends when every rank has its output)."""
    res = {}
    for key, v in per_rank[0].items():
        if not isinstance(v, list) or key == "per_row_s":
            continue
        t = [max(r[key][i] for r in per_rank) for i in range(len(v))]
        q = statistics.quantiles(t, n=4)
        res[key] = {"median_s": statistics.median(t), "q1_s": q[0], "q3_s": q[2], "min_s": min(t), "max_s": max(t)}
    return res


def model_prediction(settings: dict) -> dict | None:
    """The MoE performance model's seconds per schedule, when `moe_overlap_prediction` exists in
    `tessera.distributed.moe_perfmodel` (the MoE model, whose GPU-node API has no CPU entry point yet) or `perfmodel`.
    `settings`: T (tokens per rank), k, E, H, I, chunks (pipelined), blocks (COMET column blocks), world,
    per_row_s [GEMM0 + SwiGLU, GEMM1] (calibrated seconds per row on this machine), rows (rows a rank computes),
    dispatch_s / combine_s (measured all-to-all of the rows / of the results). Expected answer:
    {"sequential": s, "pipelined": s, "comet": s}, compared with the `emulated` medians."""
    import importlib

    for name in ("tessera.distributed.moe_perfmodel", "tessera.distributed.perfmodel"):
        try:
            fn = getattr(importlib.import_module(name), "moe_overlap_prediction", None)
        except ImportError:
            fn = None
        if fn:
            return fn(settings)
    return None


def write_md(path: str, doc: dict) -> None:
    L = [f"# MoE layer overlap on this CPU ({doc['machine']}, {doc['world']} gloo ranks, 1 thread each)", "",
         f"Run {doc['when']} (load average {doc['loadavg']:.1f} at start), torch {doc['torch']}, {doc['reps']} "
         "repetitions; per repetition the slowest rank's time; median [q1, q3] in ms. Ratios are against "
         "`sequential` in the same mode and run. `emulated`: compute replaced by sleeps calibrated to the real "
         "GEMMs of the same rows (per rank, this run); `real`: real fp32 GEMMs on cores that gloo shares.", ""]
    if doc["loadavg"] > os.cpu_count():
        L += [f"**The machine was loaded** (load average {doc['loadavg']:.1f} on {os.cpu_count()} cores, other jobs): a "
              "sleeping rank wakes up late and gloo's threads wait for a core, so every time here is inflated and "
              "noisy; read the ratios as indicative, not as this method's value.", ""]
    for name, r in doc["results"].items():
        s = SETTINGS[name]
        L += [f"## {name}: {s}", "",
              f"Calibrated compute per rank: GEMM0+SwiGLU {r['calibrated']['gemm0_ms']:.2f} ms, GEMM1 "
              f"{r['calibrated']['gemm1_ms']:.2f} ms over {r['calibrated']['rows']} rows; measured all-to-all "
              f"dispatch {r['parts/dispatch']['median_s'] * 1e3:.2f} ms, combine "
              f"{r['parts/combine']['median_s'] * 1e3:.2f} ms. Real-compute outputs vs sequential: max |diff| "
              + ", ".join(f"{k} {v:.1e}" for k, v in r["check"].items()) + ".", "",
              "| mode | schedule | median ms | [q1, q3] ms | min ms | vs sequential (medians) | model ms |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
        for mode in ("emulated", "real"):
            base = r[f"{mode}/sequential"]["median_s"]
            for sched in SCHEDULES:
                v = r[f"{mode}/{sched}"]
                pred = r["model"].get(sched) if (mode == "emulated" and r["model"]) else None
                L.append(f"| {mode} | {sched} | {v['median_s'] * 1e3:.2f} | [{v['q1_s'] * 1e3:.2f}, {v['q3_s'] * 1e3:.2f}] "
                         f"| {v['min_s'] * 1e3:.2f} | {base / v['median_s']:.2f}x | "
                         f"{'-' if pred is None else f'{pred * 1e3:.2f}'} |")
        L.append("")
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
    "- Model column: `moe_overlap_prediction(settings)` of `tessera.distributed.moe_perfmodel` when it exists "
    "(the MoE performance model is built separately); '-' means it did not exist at the time of the run.",
    "- gloo over loopback is ~100x slower per byte than NVLink and a GPU's GEMMs ~100x faster than one core: the "
    "ratio of communication to compute here was chosen, not inherited from any GPU setting.",
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--world", type=int, default=2)
    ap.add_argument("--reps", type=int, default=9)
    ap.add_argument("--settings", default=",".join(SETTINGS))
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    args = ap.parse_args()
    from tessera.distributed.testing import RankPool  # test- and benchmark-only

    loadavg = os.getloadavg()[0]
    pool = RankPool(args.world, gloo_timeout_s=300)
    results = {}
    try:
        for name in args.settings.split(","):
            per_rank = pool.run(_job, name, args.reps, timeout=3600)
            res = summarize(per_rank)
            g0, g1 = (max(r["per_row_s"][i] for r in per_rank) for i in (0, 1))
            rows = max(r["rows_received"] for r in per_rank)
            res["calibrated"] = {"gemm0_ms": g0 * rows * 1e3, "gemm1_ms": g1 * rows * 1e3, "rows": rows,
                                 "per_row_s": [g0, g1]}
            res["check"] = {k: max(r["check"][k] for r in per_rank) for k in per_rank[0]["check"]}
            settings = {**SETTINGS[name], "world": args.world, "per_row_s": [g0, g1], "rows": rows,
                        "dispatch_s": res["parts/dispatch"]["median_s"], "combine_s": res["parts/combine"]["median_s"]}
            res["model"] = model_prediction(settings) or {}
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
