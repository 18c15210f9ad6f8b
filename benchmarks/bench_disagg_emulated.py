"""Disaggregated ping-pong vs colocated expert parallelism on 4 ranks of this CPU, compute emulated by
sleeps calibrated from the measured layer halves, against the simulator's prediction (MegaScale-Infer,
arXiv 2504.02263; `tessera.parallel.disagg`).

Why sleeps: four processes on two cores cannot overlap real compute, so the attention half and the experts
sleep for the time the profile measured on one core (`benchmarks/results/moe_halves_profile_cpu.json`):
Ta = k1 ba + k2 per call with ba sequences, Te = k3 be + k4 per call with be (token, expert) rows. A
sleeping rank leaves the cores to the others, as a rank on its own accelerator would. Everything else is
real and unchanged: the runtime's code paths (`Disaggregated.generate` / `serve`, `forward_micro_batches`,
routers, M2N messages of the real sizes, combine, sampling) and, colocated, `tessera.parallel.ep`'s torch
backend (counts, rows and weights by `all_to_all_single`, combine). Only two things are swapped, in this
file: each decoder layer's `attention_half` (an instance attribute: sleep Ta(rows), return the residual
input) and the function that runs the experts (`Disaggregated.shard`, `EPExperts._local`: sleep Te(rows),
return a copy of the rows). The model is the embedded MoE reasoner's shape (hidden 256, 4 layers, top-2
of 8 experts) with random weights and random routers (tokens spread over the experts about evenly, as the
prediction assumes): only shapes and routing matter here.

Settings, per m = 1..4: each attention rank (2 of them) decodes m micro-batches of `--ba` sequences; the
colocated run decodes the same global batch (2 m ba sequences) on 4 ranks, m ba / 2 each. The
disaggregated side runs in every M2N setting of `--configs`, in the same run, alternating with colocated:
`p2p` (point-to-point gloo, each attention rank's request answered by its own expert call: the setting of
the earlier runs), `heap` (the symmetric-heap backend: rows written into the expert rank's slot, then a
flag), and either with `+batch` (one expert call per round over the requests of both attention ranks, the
paper's expert node). Per-rank decode throughput = sequences decoded per step / step time / 4 ranks, the
step time being the median interval between consecutive decode forwards on each rank (so sampling and
stopping are in it; prefill is not).

Prediction (`pingpong.simulate`, the primary `predicted` column): every input is a part measured on its
own, none is fitted to the step time it predicts.
- Ta = an attention rank's time per (layer, micro-batch) inside the decode forwards that is not spent in
  `M2N.recv`: the emulated attention half plus its real routing, `plan_sends`, `M2N.send` (the sender's
  overhead: its gloo posts, or the copy into the peer's slot) and combine, from this run.
- Te = an expert rank's time per micro-batch that is not spent in the backend's waits (p2p `_wait`, heap
  `_await`): the emulated expert calls (2 per micro-batch unbatched, 1 batched) plus its real request
  handling, regrouping and replies, from this run, over the window in which both attention ranks decode.
- Tc = the link's share of an M2N round trip measured by a probe in the same run, for the same backend,
  the same 2 x 2 ranks and the micro-batch's bytes per pair: (RTT P50 - the sender's `send` time - 2 x the
  expert side's handling per request in the probe) / 2, so that neither side's work is counted twice.
- plus, once per step, the attention ranks' work between two decode forwards (sampling, stopping).
The simulator's attention side is one server in lock step: it describes the batched settings (the expert
side waits for one request of each attention rank, which keeps them in phase, as in the paper); the
unbatched settings let the two attention ranks drift out of phase, which it cannot describe (`out of
phase`: our approximation, see the notes). `fits only` is the earlier runs' prediction kept for
continuity: Ta and Te from the profile's fits alone, Tc = the probe's RTT / 2 and its send time as the
sender's overhead, no unemulated work.

Writes benchmarks/results/disagg_emulated_cpu.{json,md,png}.

    PYTHONPATH=. python benchmarks/bench_disagg_emulated.py [--ba 32] [--steps 12] [--repeats 3] \
        [--ms 1,2,3,4] [--scales 1,10] [--configs p2p,p2p+batch,heap,heap+batch]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch
from machine import describe
from save import save_result

from tessera.distributed.testing import RankPool
from tessera.parallel.disagg import pingpong

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
MODEL_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tessera", "assets", "tiny-moe-reasoner")
ATTN, EXPERT, WORLD = 2, 2, 4
PROMPT_LEN = 4
CONFIGS = {"p2p": ("p2p", False), "p2p+batch": ("p2p", True), "heap": ("heap", False), "heap+batch": ("heap", True)}
PROBE_REPS = 40


def load_fits(path: str) -> dict:
    d = json.load(open(path))
    a, e = d["attention"]["1"], d["expert"]["1"]
    return {"k1": a["k1"], "k2": a["k2"], "k3": e["k3"], "k4": e["k4"], "layers": d["model"]["layers"],
            "hidden": d["model"]["hidden"], "top_k": d["model"]["top_k"], "act_bytes": d["model"]["act_bytes"],
            "num_experts": d["model"]["num_experts"], "source": os.path.relpath(path), "machine": d["machine"],
            "date_utc": d["date_utc"]}


def parse_configs(text: str) -> list[str]:
    names = [c.strip() for c in text.split(",") if c.strip()]
    bad = [c for c in names if c not in CONFIGS]
    if bad or not names:
        raise SystemExit(f"--configs: each of {', '.join(CONFIGS)}; got {text!r}")
    return names


# --- the stand-ins and observers (run inside the rank processes) ---------------------------------------------
def _sleep_attention(fits: dict, log: list, scale: float):
    def attention_half(x, step):  # [B, S, H] -> [B, S, H]: the calibrated time instead of the compute
        t0 = time.perf_counter()
        time.sleep(scale * (fits["k1"] * x.shape[0] + fits["k2"]))
        log.append(time.perf_counter() - t0)
        return x
    return attention_half


def _sleep_experts(fits: dict, log: list, scale: float, stats=None):
    def experts(*args):  # (layer, rows, offsets) on an expert rank, (rows, offsets) under EP -> [R, H]
        rows = args[-2]
        t0 = time.perf_counter()
        time.sleep(scale * (fits["k3"] * rows.shape[0] + fits["k4"]))
        y = rows.clone()
        dt = time.perf_counter() - t0
        log.append((rows.shape[0], t0, dt))
        if stats is not None:
            stats.busy_s += dt
        return y
    return experts


def _observe(obj, name: str, sink):
    """Wrap the bound method `name` of `obj` (an instance attribute: observe, do not change): sink(t0, t1)."""
    inner = getattr(obj, name)

    def timed(*a, **k):
        t0 = time.perf_counter()
        try:
            return inner(*a, **k)
        finally:
            sink(t0, time.perf_counter())

    setattr(obj, name, timed)


def _wait_method(m2n) -> str:
    """The backend's one blocking primitive: every wait of an M2N context goes through it."""
    return "_await" if m2n.backend == "heap" else "_wait"


def _model():
    import dataclasses

    from tessera.models import CausalLM
    from tessera.models.loader import read_config

    torch.manual_seed(0)  # the same weights on every rank
    # every layer routed, as the model the profile timed was (the embedded reasoner's layer 0 is now dense)
    model = CausalLM(dataclasses.replace(read_config(MODEL_DIR), mlp_only_layers=())).eval()
    with torch.no_grad():  # a fresh router is all zeros (every token to the same two experts): spread it
        for block in model.moe_blocks().values():
            block.gate.weight.normal_(0, 1.0)
    return model


def _prompts(n: int, seed: int, vocab: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, vocab, (n, PROMPT_LEN), generator=g).tolist()


def _step_times(starts: list[float]) -> list[float]:
    """Intervals between consecutive decode forwards (the first forward is the prefill)."""
    return [b - a for a, b in zip(starts[1:], starts[2:])]


def _disagg_job(fits: dict, m: int, ba: int, steps: int, scale: float, backend: str, batch: bool):
    from tessera.config import SamplingParams
    from tessera.distributed import parallel_state as ps
    from tessera.engine.stopping import StopChecker
    from tessera.parallel.disagg import runtime

    torch.set_num_threads(1)
    model = _model()
    attn_log, exp_log = [], []
    for layer in model.model.layers:
        layer.attention_half = _sleep_attention(fits, attn_log, scale)
    d = runtime.setup(model, ATTN, EXPERT, max_tokens=ba * PROMPT_LEN, slots=max(4, m), timeout_s=60,
                      backend=backend, batch=batch)
    try:
        if not d.is_attention:
            waits = []
            _observe(d.m2n, _wait_method(d.m2n), lambda t0, t1: waits.append((t0, t1)))
            d.shard = _sleep_experts(fits, exp_log, scale, d.stats)
            t0 = time.perf_counter()
            st = d.serve()
            return {"role": "expert", "serve": (t0, time.perf_counter()), "waits": waits, "calls": exp_log,
                    "requests": st.requests, "expert_calls": d.m2n.calls}
        acc = {"send": 0.0, "recv": 0.0}

        def add(key):
            def sink(t0, t1):
                acc[key] += t1 - t0
            return sink

        _observe(d.m2n, "send", add("send"))
        _observe(d.m2n, "recv", add("recv"))
        forwards = []  # per forward: start, end, and the seconds it slept / sent / waited in recv
        inner = runtime.forward_micro_batches

        def timed(*a):  # observe, do not change
            before = (time.perf_counter(), sum(attn_log), acc["send"], acc["recv"])
            out = inner(*a)
            t1 = time.perf_counter()
            forwards.append({"t0": before[0], "t1": t1, "sleep": sum(attn_log) - before[1],
                             "send": acc["send"] - before[2], "recv": acc["recv"] - before[3]})
            return out

        runtime.forward_micro_batches = timed
        try:
            sp = SamplingParams(max_new_tokens=steps + 1, temperature=0.0)
            prompts = _prompts(m * ba, 100 + ps.rank(), model.config.vocab_size)
            d.generate(prompts, m, sp, lambda: StopChecker(sp, set(), lambda ids: ""))
        finally:
            runtime.forward_micro_batches = inner
        return {"role": "attention", "forwards": forwards, "sequences": m * ba, "requests": d.stats.requests}
    finally:
        d.m2n.close()
        ps.destroy_groups()


def _colocated_job(fits: dict, m: int, ba: int, steps: int, scale: float):
    from tessera.config import SamplingParams
    from tessera.distributed import parallel_state as ps
    from tessera.engine.stopping import StopChecker
    from tessera.layers.sampler import sample
    from tessera.parallel.ep import shard_experts

    torch.set_num_threads(1)
    model = _model()
    attn_log, exp_log, starts = [], [], []
    for layer in model.model.layers:
        layer.attention_half = _sleep_attention(fits, attn_log, scale)
    shard_experts(model, None, "torch", max_tokens=ba * m * PROMPT_LEN)
    for block in model.moe_blocks().values():
        block.experts._local = _sleep_experts(fits, exp_log, scale)
    n = ATTN * m * ba // WORLD  # this rank's share of the same global batch
    sp = SamplingParams(max_new_tokens=steps + 1, temperature=0.0)
    stops = [StopChecker(sp, set(), lambda ids: "") for _ in range(n)]
    ids = torch.tensor(_prompts(n, 200 + ps.rank(), model.config.vocab_size))  # [n, P]
    with torch.inference_mode():
        # the attention halves are emulated (no KV cache is read), so each step feeds the last token only
        pos = torch.arange(PROMPT_LEN).expand(n, PROMPT_LEN)
        for _ in range(steps + 1):
            starts.append(time.perf_counter())
            logits = model(ids, pos, logits_index=torch.full((n,), ids.shape[1] - 1))  # [n, 1, V]
            tok = sample(logits[:, -1], sp, None, list(range(n)))
            for row, st in enumerate(stops):
                st.push(int(tok[row]))
            ids, pos = tok[:, None], pos[:, -1:] + 1
    return {"role": "colocated", "steps_s": _step_times(starts), "sequences": n}


def _probe_job(backends: list[str], hidden: int, local_experts: int, nbytes: int, reps: int):
    """M2N round trips of `nbytes` per (attention, expert) pair on this run's 2 x 2 ranks, per backend
    (`bench_m2n`'s latency loop; identity experts). Attention ranks: round-trip and `send` times; expert ranks:
    the time `serve` spent outside the backend's waits, and the requests it answered."""
    import bench_m2n
    import torch.distributed as dist

    from tessera.parallel.disagg.m2n import make_m2n

    torch.set_num_threads(1)
    attn, experts = list(range(ATTN)), list(range(ATTN, WORLD))
    attn_group = dist.new_group(attn)  # every rank creates every group
    rows = nbytes // (hidden * 4)
    matrix = torch.tensor([[rows // local_experts + (e < rows % local_experts) for e in range(local_experts)]] * EXPERT)
    x = torch.randn(EXPERT * rows, hidden, generator=torch.Generator().manual_seed(dist.get_rank()))  # [N rows, H]
    out = {}
    for b in backends:
        m2n = make_m2n(b, attn, experts, hidden, local_experts, EXPERT * rows, slots=bench_m2n.SLOTS, timeout_s=120)
        try:
            if m2n.is_attention:
                r = bench_m2n._measure_m2n(m2n, x, matrix, reps, attn_group, f"probe {b}")
                out[b] = {"lat": r["lat"], "post": r["post"]}
            else:
                waits = []
                _observe(m2n, _wait_method(m2n), lambda t0, t1, w=waits: w.append(t1 - t0))
                t0 = time.perf_counter()
                served = m2n.serve(lambda layer, rows_, offsets: rows_.clone())
                out[b] = {"handling_s": time.perf_counter() - t0 - sum(waits), "requests": served}
        finally:
            m2n.close()
    return out


# --- predictions (pure functions of measured or calibrated inputs) -------------------------------------------
def pair_bytes(fits: dict, ba: int) -> int:
    """Bytes one attention rank's micro-batch sends each expert rank (uniform routing), whole rows."""
    return int(ba * fits["top_k"] / EXPERT) * fits["hidden"] * fits["act_bytes"]


def link_tc(rtt: float, send: float, handling: float, attn: int = ATTN) -> float:
    """One direction of the link from a probe's round trip: the lined-up attention ranks' requests are
    handled one after another on each expert rank, so the slowest round trip holds its own send, `attn`
    requests' handling and two transfers. Clamped at 0 (the parts are medians of different samples)."""
    return max(0.0, rtt - send - attn * handling) / 2


def summarize_probe(per_rank: list) -> dict:
    """Per backend: RTT P50 (the slowest attention rank per repetition), send's P50, handling per request."""
    res = {}
    for b in per_rank[0]:
        att, exp = per_rank[:ATTN], per_rank[ATTN:]
        reps = len(att[0][b]["lat"])
        rtt = statistics.median(max(a[b]["lat"][i] for a in att) for i in range(reps))
        send = statistics.median(p for a in att for p in a[b]["post"])
        handling = statistics.median(e[b]["handling_s"] / max(1, e[b]["requests"]) for e in exp)
        res[b] = {"rtt_p50_s": rtt, "send_p50_s": send, "handling_s": handling, "reps": reps,
                  "tc_s": link_tc(rtt, send, handling)}
    return res


def predict_parts(ta: float, te: float, tc: float, between: float, m: int, layers: int, per_rank: float,
                  batched: bool) -> dict:
    """The primary prediction: the simulator with each side's measured busy time per (layer, micro-batch)
    (the sender's overhead is inside it, so `send_overhead` is 0), plus the serial work between forwards.
    Unbatched, also the out-of-phase approximation: the attention ranks as one side of ATTN times the speed
    with ATTN m micro-batches of Ta / ATTN, one expert call (Te / ATTN) each (ours, not the paper's model)."""
    step = pingpong.simulate(ta, te, tc, m, layers).total + between
    out = {"ta_s": ta, "te_s": te, "tc_s": tc, "between_s": between, "step_s": step, "per_rank_tok_s": per_rank / step,
           "knee_m": pingpong.knee(ta, te, tc), "conditions": pingpong.conditions_hold(ta, te, tc, m)}
    if not batched:
        step_o = pingpong.simulate(ta / ATTN, te / ATTN, tc, ATTN * m, layers).total + between
        out.update(step_out_of_phase_s=step_o, per_rank_tok_s_out_of_phase=per_rank / step_o)
    return out


def predict_fits(fits: dict, m: int, ba: int, scale: float, batched: bool, rtt: float, send: float) -> dict:
    """The earlier runs' prediction: Ta, Te from the fits alone (Te: ATTN calls per micro-batch unbatched, one
    call over ATTN requests' rows batched), Tc = RTT / 2, the sender's overhead = send's time."""
    rows_req = ba * fits["top_k"] / EXPERT  # rows one attention rank's micro-batch sends each expert rank
    ta = scale * (fits["k1"] * ba + fits["k2"])
    if batched:
        te = scale * (fits["k3"] * ATTN * rows_req + fits["k4"])
    else:
        te = ATTN * scale * (fits["k3"] * rows_req + fits["k4"])
    step = pingpong.simulate(ta, te, rtt / 2, m, fits["layers"], send_overhead=send).total
    return {"ta_s": ta, "te_s": te, "tc_s": rtt / 2, "send_overhead_s": send, "step_s": step,
            "per_rank_tok_s": ATTN * m * ba / WORLD / step}


def colocated_floor(fits: dict, m: int, ba: int, scale: float) -> float:
    """Emulated compute alone on a colocated rank (no exchange): L (Ta(m ba / 2) + Te(its rows)), seconds."""
    n = ATTN * m * ba / WORLD
    return scale * fits["layers"] * (fits["k1"] * n + fits["k2"] + fits["k3"] * n * fits["top_k"] + fits["k4"])


def overlap(intervals: list[tuple[float, float]], lo: float, hi: float) -> float:
    """Seconds of [lo, hi] covered by `intervals` (disjoint: one rank's waits)."""
    return sum(max(0.0, min(b, hi) - max(a, lo)) for a, b in intervals)


def attention_parts(att: list[dict], units: int) -> dict:
    """Per (layer, micro-batch), over every decode forward of every attention rank (medians): busy (not in
    recv), slept, sent; per step: the time between the end of one decode forward and the next's start."""
    dec = [f for r in att for f in r["forwards"][1:]]  # [0] is the prefill
    med = statistics.median
    return {"busy_s": med((f["t1"] - f["t0"] - f["recv"]) / units for f in dec),
            "slept_s": med(f["sleep"] / units for f in dec), "send_s": med(f["send"] / units for f in dec),
            "between_s": med(b["t0"] - a["t1"] for r in att for a, b in zip(r["forwards"][1:], r["forwards"][2:])),
            "step_s": [med(_step_times([f["t0"] for f in r["forwards"]])) for r in att]}


def expert_parts(exp: list[dict], att: list[dict], calls_per_mb: int) -> dict:
    """Per micro-batch, within the window in which every attention rank decodes (prefill excluded): an expert
    rank's time outside the backend's waits and in the emulated calls (medians over expert ranks)."""
    lo = max(r["forwards"][1]["t0"] for r in att)
    hi = min(r["forwards"][-1]["t1"] for r in att)
    busy, slept, frac = [], [], []
    for r in exp:
        calls = [(n, t0, dt) for n, t0, dt in r["calls"] if lo <= t0 and t0 + dt <= hi and n > 0]
        mbs = len(calls) / calls_per_mb
        b = (hi - lo) - overlap(r["waits"], lo, hi)
        busy.append(b / mbs)
        slept.append(sum(dt for _, _, dt in calls) / mbs)
        frac.append(sum(dt for _, _, dt in calls) / (hi - lo))
    med = statistics.median
    return {"busy_s": med(busy), "slept_s": med(slept), "calls_busy_fraction": med(frac), "window_s": hi - lo}


def summarize(fits: dict, probe: dict, m: int, ba: int, scale: float, dis_runs: dict, col_runs: list) -> dict:
    """One m: colocated and, per config, the measured throughput, its parts and the predictions."""
    med = statistics.median
    L, per_rank = fits["layers"], ATTN * m * ba / WORLD
    c_tok = [sum(r["sequences"] / med(r["steps_s"]) for r in run) / WORLD for run in col_runs]
    c_step = [max(med(r["steps_s"]) for r in run) for run in col_runs]
    row = {"m": m, "ba": ba, "scale": scale, "global_batch": ATTN * m * ba, "pair_bytes": pair_bytes(fits, ba),
           "colocated": {"per_rank_tok_s": med(c_tok), "runs_tok_s": c_tok, "step_s": med(c_step),
                         "compute_only_step_s": colocated_floor(fits, m, ba, scale)},
           "probe": probe, "configs": {}}
    for name, runs in dis_runs.items():
        backend, batched = CONFIGS[name]
        tok, step, a_parts, e_parts, calls, reqs = [], [], [], [], [], []
        for run in runs:
            att = [r for r in run if r["role"] == "attention"]
            exp = [r for r in run if r["role"] == "expert"]
            tok.append(sum(r["sequences"] / med(_step_times([f["t0"] for f in r["forwards"]])) for r in att) / WORLD)
            a_parts.append(attention_parts(att, L * m))
            step.append(max(a_parts[-1].pop("step_s")))
            e_parts.append(expert_parts(exp, att, 1 if batched else ATTN))
            calls.append(sum(r["expert_calls"] for r in exp))
            reqs.append(sum(r["requests"] for r in exp))
        ap = {k: med(p[k] for p in a_parts) for k in a_parts[0]}
        ep = {k: med(p[k] for p in e_parts) for k in e_parts[0]}
        pb = probe[backend]
        pred = predict_parts(ap["busy_s"], ep["busy_s"], pb["tc_s"], ap["between_s"], m, L, per_rank, batched)
        old = predict_fits(fits, m, ba, scale, batched, pb["rtt_p50_s"], pb["send_p50_s"])
        row["configs"][name] = {
            "backend": backend, "batched": batched, "per_rank_tok_s": med(tok), "runs_tok_s": tok, "step_s": med(step),
            "vs_colocated": med(tok) / med(c_tok), "attention": ap, "expert": ep,
            "expert_calls_per_request": med(c / r for c, r in zip(calls, reqs)),
            "predicted": pred, "measured_vs_predicted": med(tok) / pred["per_rank_tok_s"],
            "predicted_fits": old, "measured_vs_fits": med(tok) / old["per_rank_tok_s"]}
        if not batched:
            row["configs"][name]["measured_vs_out_of_phase"] = med(tok) / pred["per_rank_tok_s_out_of_phase"]
    return row


# --- report -------------------------------------------------------------------------------------------------
def _label(name: str) -> tuple[str, str]:
    backend, batched = CONFIGS[name]
    return backend, "1 call / micro-batch" if batched else f"{ATTN} calls / micro-batch"


def write_md(path: str, doc: dict) -> None:
    f = doc["fits"]
    ms = lambda s: f"{s * 1e3:.2f}"  # noqa: E731 - seconds as ms in the tables
    L = ["# Disaggregated ping-pong vs colocated expert parallelism, compute emulated by sleeps", "",
         f"Machine: {doc['machine']}, {WORLD} gloo processes (1 thread each), torch {doc['torch']}. Run {doc['when']}; "
         f"{doc['load_note']}. Command: `{doc['command']}` ({doc['seconds']:.0f} s).", "",
         f"Emulated halves from `{f['source']}` ({f['date_utc']}): Ta = {f['k1'] * 1e6:.1f} us x sequences + "
         f"{f['k2'] * 1e6:.0f} us per attention call, Te = {f['k3'] * 1e6:.2f} us x rows + {f['k4'] * 1e6:.0f} us per "
         "expert call, both times `scale` (1: as measured; 10: a ten times slower compute, to see the pipeline "
         f"when the exchange is small beside it). {ATTN} attention + {EXPERT} expert ranks vs {WORLD} colocated EP "
         f"ranks (torch backend) decoding the same global batch; {doc['ba']} sequences per attention micro-batch "
         f"({doc['results'][0]['pair_bytes'] // 1024} KiB per (attention, expert) pair and request), {doc['steps']} "
         f"decode steps per run, {doc['repeats']} runs of each setting, alternating (medians; every run in the "
         f"JSON); the model's {f['layers']} layers are all MoE.", "",
         "Disaggregated settings: M2N `p2p` (gloo point-to-point: a header, then the rows) or `heap` (the "
         "symmetric heap: rows written into the expert rank's slot, then a flag); expert calls `2 / micro-batch` "
         "(each attention rank's request answered on its own, as in the earlier runs) or `1 / micro-batch` "
         "(`--batch-experts`: one call over both attention ranks' requests, the paper's expert node).", "",
         "`predicted` (`pingpong.simulate`): inputs measured part by part, none fitted to the step time: Ta = an "
         "attention rank's time per (layer, micro-batch) inside the decode forwards outside `M2N.recv` (the "
         "emulated attention + routing, `send`, combine), Te = an expert rank's time per micro-batch outside the "
         "backend's waits (the emulated calls + request handling, regrouping, replies), Tc = one direction of an "
         "M2N probe's round trip in this run (same backend, 2 x 2, these bytes) less the send and the expert-side "
         "handling it contains, plus the attention ranks' work between decode forwards (sampling) once per step. "
         "`fits only`: the earlier runs' prediction (Ta, Te from the fits, Tc = probe RTT / 2, the probe's send "
         "time as the sender's overhead). `out of phase` (unbatched only): our approximation for attention ranks "
         "that are not in lock step (see the notes).", ""]
    for block in doc["results_by_scale"]:
        L += [f"## scale {block['scale']:g}", "",
              "| m | M2N | expert calls | disagg tok/s/rank | colocated tok/s/rank | disagg / colocated | predicted "
              "| measured / predicted | out of phase | measured / that | fits only | measured / that | experts computing |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for r in block["rows"]:
            for name, c in r["configs"].items():
                p, o = c["predicted"], c["predicted_fits"]
                oop = (f"{p['per_rank_tok_s_out_of_phase']:.0f} | {c['measured_vs_out_of_phase']:.2f}"
                       if "per_rank_tok_s_out_of_phase" in p else "- | -")
                L.append(f"| {r['m']} | {' | '.join(_label(name))} | {c['per_rank_tok_s']:.0f} | "
                         f"{r['colocated']['per_rank_tok_s']:.0f} | {c['vs_colocated']:.2f}x | {p['per_rank_tok_s']:.0f} "
                         f"| **{c['measured_vs_predicted']:.2f}** | {oop} | {o['per_rank_tok_s']:.0f} | "
                         f"{c['measured_vs_fits']:.2f} | {c['expert']['calls_busy_fraction']:.0%} |")
        L += ["", "The simulator's inputs per (layer, micro-batch) in ms (`of which`: the emulated compute), and the "
              "steps in ms:", "",
              "| m | M2N | expert calls | Ta | of which slept | of which send | Te | of which slept | Tc link | "
              "probe RTT | probe send | probe handling / request | between forwards | knee m | disagg step | "
              "predicted step | fits-only Ta | fits-only Te | colocated step |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- "
              "| --- | --- |"]
        for r in block["rows"]:
            for name, c in r["configs"].items():
                a, e, p, o, pb = c["attention"], c["expert"], c["predicted"], c["predicted_fits"], r["probe"][c["backend"]]
                L.append(f"| {r['m']} | {' | '.join(_label(name))} | {ms(a['busy_s'])} | {ms(a['slept_s'])} | "
                         f"{ms(a['send_s'])} | {ms(e['busy_s'])} | {ms(e['slept_s'])} | {ms(pb['tc_s'])} | "
                         f"{ms(pb['rtt_p50_s'])} | {ms(pb['send_p50_s'])} | {ms(pb['handling_s'])} | "
                         f"{ms(a['between_s'])} | {p['knee_m']} | {c['step_s'] * 1e3:.1f} | {p['step_s'] * 1e3:.1f} | "
                         f"{ms(o['ta_s'])} | {ms(o['te_s'])} | {r['colocated']['step_s'] * 1e3:.1f} |")
        L.append("")
    L += ["![throughput vs m](disagg_emulated_cpu.png)", "", "## Reading it", "", *doc["notes"]]
    with open(path, "w") as fh:
        fh.write("\n".join(L) + "\n")


COLORS = {"p2p": "tab:blue", "p2p+batch": "tab:cyan", "heap": "tab:red", "heap+batch": "tab:green"}


def plot(path: str, doc: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    blocks = doc["results_by_scale"]
    fig, axes = plt.subplots(1, len(blocks), figsize=(6.5 * len(blocks), 4.6), squeeze=False)
    for ax, block in zip(axes[0], blocks):
        rows = block["rows"]
        ms = [r["m"] for r in rows]
        for name in rows[0]["configs"]:
            col, (backend, calls) = COLORS[name], _label(name)
            ax.plot(ms, [r["configs"][name]["per_rank_tok_s"] for r in rows], "o-", color=col,
                    label=f"disagg {backend}, {calls}: measured")
            ax.plot(ms, [r["configs"][name]["predicted"]["per_rank_tok_s"] for r in rows], "x--", color=col,
                    label="  simulator (measured parts)")
        ax.plot(ms, [r["colocated"]["per_rank_tok_s"] for r in rows], "s-", color="tab:orange",
                label="colocated EP x4, measured")
        ax.set_xticks(ms)
        ax.set_xlabel(f"micro-batches m (global batch = 2 m x {doc['ba']} sequences)")
        ax.set_ylabel("decode tokens / s per rank (median)")
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        ax.set_title(f"compute emulated by sleeps, scale {block['scale']:g}", fontsize=10)
        ax.legend(fontsize=6.5)
    fig.suptitle(f"4 gloo ranks on {doc['machine'].split(',')[0]}, {doc['when']}, load {doc['loadavg_start']:.1f} "
                 f"-> {doc['loadavg_end']:.1f}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def notes(doc: dict) -> list[str]:
    L = []
    for block in doc["results_by_scale"]:
        rows = block["rows"]
        for name in rows[0]["configs"]:
            cs = [r["configs"][name] for r in rows]
            ratios = ", ".join(f"{c['measured_vs_predicted']:.2f}" for c in cs)
            within = [r["m"] for r, c in zip(rows, cs) if abs(c["measured_vs_predicted"] - 1) <= 0.15]
            other = statistics.median((c["attention"]["busy_s"] - c["attention"]["slept_s"]) / c["attention"]["slept_s"]
                                      for c in cs)
            L.append(f"- scale {block['scale']:g}, {' + '.join(_label(name))}: measured / predicted = {ratios} for "
                     f"m = {', '.join(str(r['m']) for r in rows)} (target: within 15%; met for m = "
                     f"{', '.join(map(str, within)) or 'none'}); fits only: "
                     + ", ".join(f"{c['measured_vs_fits']:.2f}" for c in cs)
                     + f". Attention's unemulated work per (layer, micro-batch): {other:.0%} of its emulated time "
                     "(median); disaggregated / colocated per rank: "
                     + ", ".join(f"{c['vs_colocated']:.2f}x" for c in cs) + ".")
    return L + NOTES


NOTES = [
    "- What is real and what is not: the sleeps stand for the compute of the two halves; the M2N messages, the "
    "all-to-alls, routing, plan_sends / combine, the runtime's Python and sampling are real and run on the two "
    "shared cores, and the primary prediction takes them in as measured parts (`Ta`, `Te`, `between forwards` "
    "above the emulated `of which slept`). `fits only` leaves them out, which is why it over-predicts at scale 1, "
    "where they are as large as the emulated compute.",
    "- Lock step: the simulator's attention side is one server that runs every attention rank's micro-batch i at "
    "once (the paper's data-parallel attention nodes). Batched (`1 call / micro-batch`), an expert rank waits for "
    "the request of each attention rank before its call, which keeps the attention ranks in phase: the "
    "simulator's setting. Unbatched, each attention rank waits only for its own requests, so the two drift apart "
    "and take turns at the experts (rank 0's attention runs while the experts serve rank 1): a schedule the "
    "lock-step simulator cannot describe. `out of phase` approximates it as one attention side of twice the speed "
    "with 2 m micro-batches of Ta / 2 and one expert call (Te / 2) each: ours, not the paper's model, and only a "
    "bound-like guess (the real phase drifts between the two).",
    "- Tc: the probe's round trip contains the sender's `send` (gloo's posts; for the heap, the copy into the "
    "peer's slot) and the expert side's handling of the requests, which the measured Ta and Te already hold, so "
    "the link gets what remains; for the heap that is little more than the poll's wake-up. p2p's expert side "
    "still receives a request's rows only after its header (gloo needs the receive posted), so part of each "
    "request's transfer is a wait the expert cannot fill, which the simulator (links beside compute) does not "
    "have.",
    "- Colocated is the same global batch on 4 ranks with 4 collectives per layer (counts, rows, weights, combine; "
    "the torch backend, one expert call per layer); with these fits attention costs more per sequence (k1 = 40 "
    "us) than the experts per row, so spreading attention over 4 ranks instead of 2 favours colocated, as the "
    "planner found for 4 ranks (its balance rule wants ~8 attention replicas per expert group).",
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ba", type=int, default=32, help="sequences per attention micro-batch (32: the largest profiled)")
    ap.add_argument("--steps", type=int, default=12, help="decode steps timed per run (>= 3)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--ms", default="1,2,3,4")
    ap.add_argument("--scales", default="1,10", help="emulated compute times these factors (1: as profiled)")
    ap.add_argument("--configs", default=",".join(CONFIGS), help="disaggregated settings: M2N backend, +batch")
    ap.add_argument("--profile", default=os.path.join(RESULTS, "moe_halves_profile_cpu.json"))
    ap.add_argument("--out", default=RESULTS)
    args = ap.parse_args()
    if args.ba % 2 or args.ba < 2:
        raise SystemExit("--ba must be even (the colocated ranks split 2 m ba sequences four ways)")
    if args.steps < 3:
        raise SystemExit("--steps must be >= 3 (step times are intervals between decode forwards)")
    fits, configs = load_fits(args.profile), parse_configs(args.configs)
    backends = list(dict.fromkeys(CONFIGS[c][0] for c in configs))
    ms, scales = [int(v) for v in args.ms.split(",")], [float(v) for v in args.scales.split(",")]
    loadavg_start, t_start = os.getloadavg()[0], time.time()
    pool = RankPool(WORLD, gloo_timeout_s=60)
    by_scale = []
    try:
        for scale in scales:
            rows = []
            for m in ms:
                probe = summarize_probe(pool.run(_probe_job, backends, fits["hidden"],
                                                 fits["num_experts"] // EXPERT, pair_bytes(fits, args.ba),
                                                 PROBE_REPS, timeout=300))  # under the load of the moment
                dis, col = {c: [] for c in configs}, []
                for _ in range(args.repeats):  # alternate, so slow spells of the shared machine hit every setting
                    for c in configs:
                        dis[c].append(pool.run(_disagg_job, fits, m, args.ba, args.steps, scale, *CONFIGS[c],
                                               timeout=600))
                    col.append(pool.run(_colocated_job, fits, m, args.ba, args.steps, scale, timeout=600))
                rows.append(summarize(fits, probe, m, args.ba, scale, dis, col))
                r = rows[-1]
                print(f"scale {scale:g} m={m}: colocated {r['colocated']['per_rank_tok_s']:.0f} tok/s/rank; " + "; ".join(
                      f"{n} {c['per_rank_tok_s']:.0f} (predicted {c['predicted']['per_rank_tok_s']:.0f}, "
                      f"{c['measured_vs_predicted']:.2f})" for n, c in r["configs"].items()), flush=True)
            by_scale.append({"scale": scale, "rows": rows})
    finally:
        pool.stop()
    loadavg_end = os.getloadavg()[0]
    shared = max(loadavg_start, loadavg_end) > 1.0
    load_note = (f"load average {loadavg_start:.1f} at start, {loadavg_end:.1f} at end"
                 + (" (the machine was shared with other jobs)" if shared else ""))
    cmd = "python benchmarks/bench_disagg_emulated.py" + "".join(
        f" --{k} {v}" for k, v in (("ba", args.ba), ("steps", args.steps), ("repeats", args.repeats), ("ms", args.ms),
                                  ("scales", args.scales), ("configs", args.configs))
        if str(v) != str(ap.get_default(k)))
    doc = {"schema": "tessera.bench.disagg_emulated/2", "machine": describe(), "torch": torch.__version__,
           "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(t_start)), "seconds": time.time() - t_start,
           "loadavg_start": loadavg_start, "loadavg_end": loadavg_end, "shared": shared, "load_note": load_note,
           "command": cmd, "ba": args.ba, "steps": args.steps, "repeats": args.repeats, "configs": configs,
           "fits": fits, "probe_reps": PROBE_REPS, "results_by_scale": by_scale}
    doc["results"] = by_scale[0]["rows"]
    doc["notes"] = notes(doc)
    save_result(args.out, "disagg_emulated_cpu", doc, write_md, plot)


if __name__ == "__main__":
    main()
