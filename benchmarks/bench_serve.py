"""Serving under load: a bounded load generator against `tessera serve` (a real HTTP server on 127.0.0.1 in
this process, so the benchmark can read the engine's counters), streaming every request to time it. The
load generator runs in a process of its own (`--client process`, the default), as clients do: in the
server's process its parsing of every streamed chunk would hold the interpreter lock the engine's thread
needs between steps.

A fixed number of requests (`--requests`): held-out reasoning problems of mixed difficulty, so prompts and
outputs have mixed lengths; each asks for up to 1.25 x its reference solution's length + 32 tokens,
greedy, and usually stops at EOS. They arrive all at once (`--arrivals burst`, the default) or as a
Poisson process (`--arrivals poisson --rate R` per second, seeded). The burst is the saturating load the
throughput comparisons ask about: the queue holds requests until the last batch, so every scenario runs
as many rows as its limit allows, and throughput measures the engine, not the offered load (at 2/s the
engine was mostly idle and throughput followed the arrivals). Four scenarios get the same requests at the
same arrival times:

  continuous       the server as it is, at most `--max-running` requests at a time (default: the static
                   batch, so both batch schedules run the same number of rows and differ only in when a
                   finished row's place is refilled): requests join the running batch between decode steps
  static           the same server, fed in static batches: the requests that have arrived (up to
                   `--static-batch`) are sent together, and the next batch only after all of them finished
                   (a request that arrives meanwhile waits for the whole batch, as with one `generate` call
                   per batch)
  full KV, cap     continuous, under a KV-memory cap of `--cap-requests` times the median request's full-KV
                   reservation (requests that do not fit wait); no limit on running requests but the cap
  R-KV 10%, cap    the same cap, every request with R-KV at a budget of 10% of the median request's length

Throughput = generated tokens / (last answer - first arrival). Time to first token counts from the
request's arrival (so waiting for a static batch counts); time per output token = (end - first token) /
(tokens - 1). P50 / P99 over requests. Ratios are against `static` (throughput) and `full KV, cap`,
measured in the same run. Under the cap, EOS is ignored so that both scenarios generate exactly the same
tokens (R-KV at a small budget changes what this tiny model writes, and where it stops); the other two
count the answers whose final result is correct. Mean batch = decoded tokens / decode steps (how many
requests a decode step served on average); ms / step = the engine's decode time / decode steps. Decoded
throughput is mean batch / (ms / step) while the engine is busy: the two say whether a ratio comes from
fewer, fuller steps or from cheaper ones.
Writes `<out>.json`, `<out>.md` and `<out>.png`.

    python benchmarks/bench_serve.py --out benchmarks/results/serve_cpu
    python benchmarks/bench_serve.py --compile --scenarios continuous,static --out benchmarks/results/serve_cpu_compiled
    python benchmarks/bench_serve.py --requests 4 --difficulties 2,3 --static-batch 2 --out /tmp/serve_tiny
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import random
import statistics
import time
from pathlib import Path

import httpx
import torch
from machine import describe


def draw_problems(rng: random.Random, n: int, lo: int, hi: int) -> list:
    """The benchmark's requests: n held-out reasoning problems, difficulty uniform in [lo, hi] (also read by
    `serve_step_bound.py`, so its bound is about these very requests)."""
    from tessera.tasks.reasoning import EVAL_SEED_BASE, make_problem

    return [make_problem(EVAL_SEED_BASE + 5000 + i, rng.randint(lo, hi)) for i in range(n)]


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))] if xs else float("nan")


async def one(client: httpx.AsyncClient, url: str, body: dict, arrival: float) -> dict:
    text, first, used = "", None, 0
    async with client.stream("POST", url + "/v1/completions", json=body | {"stream": True}) as r:
        r.raise_for_status()
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            ch = json.loads(line[6:])
            if ch["choices"]:
                if first is None and ch["choices"][0]["text"]:
                    first = time.perf_counter()
                text += ch["choices"][0]["text"]
            if ch.get("usage"):
                used = ch["usage"]["completion_tokens"]
    end = time.perf_counter()
    first = first or end
    return {"arrival": arrival, "first": first, "end": end, "tokens": used, "text": text}


async def drive(url: str, bodies: list[dict], gaps: list[float], static_batch: int | None) -> list[dict]:
    t0 = time.perf_counter()
    arrivals = [t0 + sum(gaps[: i + 1]) for i in range(len(bodies))]
    async with httpx.AsyncClient(timeout=None, limits=httpx.Limits(max_connections=len(bodies))) as client:
        if static_batch is None:
            async def at(i):
                await asyncio.sleep(max(0.0, arrivals[i] - time.perf_counter()))
                return await one(client, url, bodies[i], arrivals[i])
            return list(await asyncio.gather(*(at(i) for i in range(len(bodies)))))
        out, i = [], 0
        while i < len(bodies):
            await asyncio.sleep(max(0.0, arrivals[i] - time.perf_counter()))
            now = time.perf_counter()
            j = i + 1
            while j < len(bodies) and j - i < static_batch and arrivals[j] <= now:
                j += 1
            out += await asyncio.gather(*(one(client, url, bodies[k], arrivals[k]) for k in range(i, j)))
            i = j
        return out


def drive_sync(url: str, bodies: list[dict], gaps: list[float], static_batch: int | None) -> list[dict]:
    return asyncio.run(drive(url, bodies, gaps, static_batch))


def summarize(name: str, runs: list[dict], correct: int) -> dict:
    t_start = min(r["arrival"] for r in runs)
    t_end = max(r["end"] for r in runs)
    tokens = sum(r["tokens"] for r in runs)
    ttft = [r["first"] - r["arrival"] for r in runs]
    tpot = [(r["end"] - r["first"]) / (r["tokens"] - 1) for r in runs if r["tokens"] > 1]
    return {"scenario": name, "requests": len(runs), "generated_tokens": tokens, "makespan_s": t_end - t_start,
            "throughput_tok_s": tokens / (t_end - t_start), "ttft_p50_s": pct(ttft, 50), "ttft_p99_s": pct(ttft, 99),
            "tpot_p50_s": pct(tpot, 50), "tpot_p99_s": pct(tpot, 99), "correct": correct}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--arrivals", choices=("burst", "poisson"), default="burst",
                    help="burst: every request at once (saturating); poisson: exponential gaps at --rate")
    ap.add_argument("--rate", type=float, default=4.0, help="mean arrivals per second (--arrivals poisson)")
    ap.add_argument("--difficulties", default="3,12", help="problem difficulty range (steps), inclusive")
    ap.add_argument("--static-batch", type=int, default=8)
    ap.add_argument("--max-running", type=int, default=None,
                    help="most requests the continuous scenario runs at once (default: --static-batch; 0: no limit)")
    ap.add_argument("--cap-requests", type=float, default=2.0,
                    help="KV cap in units of the median request's full-KV reservation")
    ap.add_argument("--rkv-ratio", type=float, default=0.1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--compile", action="store_true", help="the compiled decode step (`tessera serve --compile`)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--scenarios", default="continuous,static,full KV cap,R-KV cap")
    ap.add_argument("--client", choices=("process", "thread"), default="process",
                    help="run the load generator in a process of its own (default) or in the server's process")
    ap.add_argument("--out", default="benchmarks/results/serve_cpu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from tessera.config import SamplingParams
    from tessera.engine import LLM
    from tessera.serve.app import build_app
    from tessera.serve.runner import ServerThread
    from tessera.tasks.reasoning import score

    rng = random.Random(args.seed)
    lo, hi = map(int, args.difficulties.split(","))
    problems = draw_problems(rng, args.requests, lo, hi)
    gaps = [rng.expovariate(args.rate) if args.arrivals == "poisson" else 0.0 for _ in problems]
    max_running = args.static_batch if args.max_running is None else args.max_running or None
    llm = LLM.load(compile=args.compile)
    if args.compile:
        llm.compile_now()  # as `tessera serve --compile` does before it listens
    max_tokens = [int(1.25 * len(p.solution.split())) + 32 for p in problems]  # room for a longer trace
    lengths = [len(llm.tokenizer.encode(p.prompt)) + n for p, n in zip(problems, max_tokens)]
    median_len = int(statistics.median(lengths))
    budget = max(16, int(args.rkv_ratio * median_len))
    rkv = {"press": "rkv", "budget": budget, "buffer": 128, "window": 8}  # the paper's buffer and window
    probe = llm.engine()
    med = problems[lengths.index(sorted(lengths)[len(lengths) // 2])]
    ids = llm.tokenizer.encode(med.prompt)
    req = probe.make_request(ids, SamplingParams(max_tokens=max_tokens[problems.index(med)]))
    cap = int(args.cap_requests * req.bound.slots * req.bound.slot_bytes + req.bound.row_bytes)

    def bodies(extra):
        return [{"model": "tiny-reasoner", "prompt": p.prompt, "max_tokens": n, "temperature": 0, **extra}
                for p, n in zip(problems, max_tokens)]

    # under the cap both generate every request's max_tokens (EOS ignored), so the same tokens are timed
    fixed = {"ignore_eos": True}
    # (KV cap, extra request fields, static batch size, most running requests)
    scenarios = {"continuous": (None, {}, None, max_running), "static": (None, {}, args.static_batch, None),
                 "full KV cap": (cap, fixed, None, None), "R-KV cap": (cap, rkv | fixed, None, None)}
    rows = []
    # one client process for every scenario (spawned once: its imports stay out of the timings)
    pool = multiprocessing.get_context("spawn").Pool(1) if args.client == "process" else None
    for name in args.scenarios.split(","):
        kv_cap, extra, static, most = scenarios[name]
        app = build_app(llm, "tiny-reasoner", kv_cap_bytes=kv_cap, max_running=most)
        with ServerThread(app) as url:
            httpx.post(url + "/v1/completions", json={"model": "tiny-reasoner", "prompt": problems[0].prompt,
                                                      "max_tokens": 4})  # warm-up
            st = app.state.engine.engine.stats
            before = (st.generated_tokens - st.batch_first_tokens, st.decode_steps, st.decode_s)
            job = (url, bodies(extra), gaps, static)
            runs = pool.apply(drive_sync, job) if pool is not None else drive_sync(*job)
            decoded, steps = st.generated_tokens - st.batch_first_tokens - before[0], st.decode_steps - before[1]
            decode_s, peak = st.decode_s - before[2], st.peak_kv_bytes
        correct = None if extra.get("ignore_eos") else sum(score(p, r["text"]) for p, r in zip(problems, runs))
        rows.append(summarize(name, runs, correct) | {"peak_kv_mib": peak / 2**20, "decode_steps": steps,
                                                      "mean_batch": decoded / steps if steps else 0.0,
                                                      "ms_per_decode_step": 1e3 * decode_s / steps if steps else 0.0})
        print(name, {k: round(v, 4) if isinstance(v, float) else v for k, v in rows[-1].items()}, flush=True)
    if pool is not None:
        pool.close()
        pool.join()
    by = {r["scenario"]: r for r in rows}
    if "static" in by and "continuous" in by:
        by["continuous"]["throughput_vs_static"] = by["continuous"]["throughput_tok_s"] / by["static"]["throughput_tok_s"]
    if "full KV cap" in by and "R-KV cap" in by:
        by["R-KV cap"]["throughput_vs_full_kv_cap"] = (by["R-KV cap"]["throughput_tok_s"]
                                                      / by["full KV cap"]["throughput_tok_s"])
    meta = {"machine": describe().rsplit(",", 1)[0], "threads": args.threads, "cores": os.cpu_count(),
            "torch": torch.__version__, "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
            "model": "embedded tiny-reasoner (stage 4 weights), fp32" + (", compiled decode step" if args.compile else ""),
            "requests": args.requests,
            "arrivals": args.arrivals, "rate_per_s": args.rate if args.arrivals == "poisson" else None,
            "difficulties": [lo, hi], "static_batch": args.static_batch, "max_running": max_running,
            "client": args.client, "kv_cap_bytes": cap, "cap_requests": args.cap_requests, "rkv": rkv,
            "median_request_tokens": median_len,
            "load_average_1min": os.getloadavg()[0], "seed": args.seed,
            "note": ("shared machine: other jobs were using the same cores" if os.getloadavg()[0] > 2 else
                     "quiet machine") + ", so absolute figures move between runs; the ratios compare scenarios of one run"}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    load = "all arriving at once" if args.arrivals == "burst" else f"Poisson arrivals at {args.rate}/s"
    md = [f"# Serving under load: {args.requests} requests, {load}", "",
          f"{meta['machine']}, {args.threads} torch thread, {meta['date_utc']} UTC, {meta['model']}. {meta['note']} "
          f"(1-minute load average at the end: {meta['load_average_1min']:.1f}). Problems of difficulty {lo}-{hi} "
          f"(median request {median_len} tokens), greedy; static batches of up to {args.static_batch}, continuous "
          f"batching of up to {max_running or 'any number of'} requests (the cap scenarios: only the KV cap); KV cap "
          f"{cap / 2**20:.2f} MiB ({args.cap_requests} x the median request's full-KV reservation); R-KV budget "
          f"{rkv['budget']}, buffer {rkv['buffer']}, window 8.", ""]
    if args.arrivals == "burst":
        md += ["Why this load: the throughput targets ask about a saturated engine, so every request arrives at "
               "once and waits in the queue until a row is free; with Poisson arrivals at a low rate the engine idles "
               "between arrivals and throughput follows the offered load (`--arrivals poisson --rate R` still gives "
               "that). " + ("Continuous batching runs at most as many requests as a static batch, so the ratio "
                            "measures "
                            "refilling the places of finished requests at once, not a larger batch" if max_running ==
                            args.static_batch else f"Continuous batching runs up to {max_running or 'all'} requests at "
                            f"once against static batches of {args.static_batch}, so the ratio includes the larger "
                            "batch") + "; under the KV cap only the cap limits how many requests run, which is where "
               "R-KV's smaller reservation shows.", ""]
    md += ["| scenario | tokens/s | vs baseline | TTFT P50 / P99 (s) | TPOT P50 / P99 (ms) | makespan (s) "
           "| decode steps | mean batch | ms / step | peak KV (MiB) | correct |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ratio = r.get("throughput_vs_static") or r.get("throughput_vs_full_kv_cap")
        base = " (vs static)" if "throughput_vs_static" in r else " (vs full KV, cap)" if ratio else ""
        ok = "- (EOS ignored)" if r["correct"] is None else f"{r['correct']}/{r['requests']}"
        md.append(f"| {r['scenario']} | {r['throughput_tok_s']:.0f} | {f'{ratio:.2f}x{base}' if ratio else '-'} | "
                  f"{r['ttft_p50_s']:.2f} / {r['ttft_p99_s']:.2f} | {1e3 * r['tpot_p50_s']:.1f} / "
                  f"{1e3 * r['tpot_p99_s']:.1f} | {r['makespan_s']:.1f} | {r['decode_steps']} | "
                  f"{r['mean_batch']:.2f} | "
                  f"{r['ms_per_decode_step']:.2f} | {r['peak_kv_mib']:.2f} | "
                  f"{ok} |")
    out.with_suffix(".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    plot(rows, meta, out.with_suffix(".png"))


def plot(rows, meta, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(11, 4.2))
    names = [r["scenario"] for r in rows]
    colors = ["tab:blue", "tab:gray", "tab:orange", "tab:green"][: len(rows)]
    ax[0].bar(names, [r["throughput_tok_s"] for r in rows], color=colors)
    ax[0].set_ylabel("generated tokens / s")
    ax[0].set_title("throughput")
    for r in rows:
        ax[1].errorbar(r["throughput_tok_s"], r["ttft_p50_s"],
                       yerr=[[0], [r["ttft_p99_s"] - r["ttft_p50_s"]]], fmt="o", capsize=4,
                       color=colors[names.index(r["scenario"])], label=r["scenario"])
    ax[1].set_xlabel("throughput (tokens / s)")
    ax[1].set_ylabel("time to first token (s): P50, bar to P99")
    ax[1].set_yscale("log")
    ax[1].set_title("latency vs throughput")
    ax[1].legend(fontsize=8)
    load = "at once" if meta["arrivals"] == "burst" else f"at {meta['rate_per_s']}/s"
    fig.suptitle(f"tessera serve, {meta['requests']} requests {load}, {meta['model']}\n"
                 f"{meta['machine']}, {meta['threads']} thread, {meta['note'].split(',')[0]}, {meta['date_utc']} UTC", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
