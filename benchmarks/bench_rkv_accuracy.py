"""Accuracy vs KV budget: FullKV, R-KV, SnapKV, StreamingLLM and H2O on held-out reasoning problems.

Every method decodes the same problems (seeds `--seed-start` .. `--seed-start + n - 1`, greedy) with
the same decode-time scheduler (`--buffer`, `--window`). Budgets are fractions of the average
reference trace length of those problems (`--fractions`), also reported in tokens. FullKV runs in
the same invocation, so every ratio is against a baseline from the same run and machine.

Points can be split over processes (`--shard i/k`, each writes its own file under `--work-dir`);
`--report` merges whatever points exist into `<out>.json`, `<out>.md` and `<out>.png`; `--replot-from
<out>.json` redraws the PNG from a result file alone (seconds, nothing rerun).

    python benchmarks/bench_rkv_accuracy.py --n 200                  # the issue's 200 problems per point
    python benchmarks/bench_rkv_accuracy.py --n 48 --shard 0/2 &     # two processes, then:
    python benchmarks/bench_rkv_accuracy.py --n 48 --shard 1/2; python benchmarks/bench_rkv_accuracy.py --n 48 --report
    python benchmarks/bench_rkv_accuracy.py --replot-from benchmarks/results/rkv_accuracy.json \
        --weights "2026-11-26 weights" --machine "Intel Xeon, 2 vCPUs"
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

METHODS = {"rkv": "R-KV", "snapkv": "SnapKV", "streamingllm": "StreamingLLM", "h2o": "H2O"}


def machine() -> str:
    cpu = platform.processor() or "cpu"
    try:
        cpu = next(ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                   if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {torch.get_num_threads()} torch threads"


def points(args, avg: float) -> list[tuple[str, float | None, int | None]]:
    pts = [("full", None, None)]
    for f in args.fractions:
        b = max(args.window + 1, round(f * avg))
        pts += [(m, f, b) for m in args.methods]
    return pts


def run_shard(args, avg: float, work: Path) -> None:
    from tessera.engine import LLM
    from tessera.kv.presses import make_press
    from tessera.tasks.evaluate import evaluate

    llm = LLM.load(args.model)
    i, k = map(int, args.shard.split("/"))
    out = work / f"shard{i}of{k}.json"
    done = json.loads(out.read_text()) if out.exists() else {}
    for j, (m, f, b) in enumerate(points(args, avg)):
        key = f"{m}@{b}"
        if j % k != i or key in done:
            continue
        factory = None if m == "full" else (lambda m=m, b=b: make_press(m, budget=b, buffer=args.buffer, window=args.window))
        r = evaluate(llm, n=args.n, seed_start=args.seed_start, batch_size=args.batch_size,
                     press_factory=factory, difficulty=args.difficulty, progress=False)
        done[key] = {"method": m, "fraction": f, "budget": b, **{x: r[x] for x in (
            "n", "seeds", "correct", "accuracy", "mean_generated_tokens", "tokens_per_s", "wall_s", "peak_kv_bytes")}}
        out.write_text(json.dumps(done, indent=1))  # after every point: a cut-off run keeps its work
        print(f"[{time.strftime('%H:%M:%S')}] {key}: acc {r['accuracy']:.3f} ({r['correct']}/{r['n']}) "
              f"{r['wall_s']:.0f}s", flush=True)


def report(args, avg: float, work: Path) -> None:
    merged = {}
    for f in sorted(work.glob("shard*.json")):
        merged.update(json.loads(f.read_text()))
    full = next((v for v in merged.values() if v["method"] == "full"), None)
    if full is None:
        raise SystemExit("no FullKV point yet: nothing to compare against")
    rows = sorted((v for v in merged.values() if v["method"] != "full"), key=lambda v: (v["fraction"], v["method"]))
    for v in rows:
        v["vs_full"] = v["accuracy"] / full["accuracy"] if full["accuracy"] else None
    res = {"model": str(args.model or "embedded tiny-reasoner"), "machine": machine(), "n": args.n,
           "difficulty": args.difficulty,
           "seeds": [args.seed_start, args.seed_start + args.n - 1], "avg_trace_tokens": avg,
           "buffer": args.buffer, "window": args.window, "note": args.note, "weights": args.weights,
           "full": full, "points": rows}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(res, indent=2) + "\n")
    fr = sorted({v["fraction"] for v in rows})
    ms = [m for m in METHODS if any(v["method"] == m for v in rows)]
    cell = {(v["method"], v["fraction"]): v for v in rows}
    lines = [f"# Accuracy vs KV budget ({res['model']})", "", *([f"**Note:** {args.note}", ""] if args.note else []),
             (f"{args.n} held-out problems per point (seeds {res['seeds'][0]}..{res['seeds'][1]}, "
              f"{'the default difficulty mix' if args.difficulty is None else f'{args.difficulty} steps each'}), greedy, "
              f"buffer {args.buffer}, window {args.window}; average reference trace {avg:.0f} tokens. "
              f"Machine: {res['machine']}. Written by `benchmarks/bench_rkv_accuracy.py`."), "",
             (f"FullKV: **{full['accuracy']:.3f}** ({full['correct']}/{full['n']}), "
              f"peak KV {full['peak_kv_bytes'] / 2**20:.1f} MiB (batch {args.batch_size})."), "",
             "Accuracy (and % of FullKV) per budget:", "",
             "| budget | tokens | " + " | ".join(METHODS[m] for m in ms) + " |",
             "|---|---|" + "---|" * len(ms)]
    for f in fr:
        b = next(v["budget"] for v in rows if v["fraction"] == f)
        cells = [f"{cell[m, f]['accuracy']:.3f} ({100 * (cell[m, f]['vs_full'] or 0):.0f}%)" if (m, f) in cell else "-"
                 for m in ms]
        lines.append(f"| {100 * f:.0f}% | {b} | " + " | ".join(cells) + " |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    _plot(out.with_suffix(".png"), res)
    print("\n".join(lines))


def _plot(path: Path, res: dict, weights: str | None = None, machine: str | None = None) -> None:
    """Accuracy (%) against the budget, one line per press, FullKV as a horizontal line. Budgets sit on a log axis
    so that 5, 10 and 16% do not crowd; each press is shifted a little sideways and has its own marker and line
    style, so that presses with equal scores stay visible. The title names the model, its weights and the machine."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    full, rows = res["full"], res["points"]
    ms = [m for m in METHODS if any(v["method"] == m for v in rows)]
    fracs = sorted({v["fraction"] for v in rows})
    styles = [("o", "-"), ("s", "--"), ("D", "-."), ("^", ":")]
    fig, ax = plt.subplots(figsize=(8.5, 4.8))
    for i, m in enumerate(ms):
        pts = sorted((v["fraction"], v["accuracy"]) for v in rows if v["method"] == m)
        shift = 1 + 0.05 * (i - (len(ms) - 1) / 2)  # multiplicative: equal spacing on the log axis
        marker, ls = styles[i % len(styles)]
        ax.plot([100 * f * shift for f, _ in pts], [100 * a for _, a in pts], marker=marker, ls=ls, lw=1.8, ms=7,
                label=METHODS[m])
    ax.axhline(100 * full["accuracy"], color="black", ls=(0, (5, 3)), lw=1.2,
               label=f"FullKV {100 * full['accuracy']:.1f}% ({full['correct']}/{full['n']})")
    budget = {v["fraction"]: v["budget"] for v in rows}
    ax.set_xscale("log")
    ax.set_xticks([100 * f for f in fracs], [f"{100 * f:.0f}%\n{budget[f]} tok" for f in fracs])
    ax.minorticks_off()
    ax.set_xlabel(f"KV budget per KV head: % of the average reference trace ({res['avg_trace_tokens']:.0f} tokens)")
    ax.set_ylabel("accuracy, % of problems")
    ax.set_ylim(0, 102)
    weights = weights or res.get("weights") or ""
    machine = (machine or res.get("machine", "")).replace("(R)", "")
    ax.set_title(f"Accuracy vs KV budget: {res.get('model', 'embedded tiny-reasoner')}"
                 f"{', ' + weights if weights else ''}\n{machine}; {res['n']} held-out problems per point "
                 f"(seeds {res['seeds'][0]}..{res['seeds'][1]}),\ngreedy, buffer {res['buffer']}, window {res['window']}",
                 fontsize=10)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="HF-format model dir (default: the embedded tiny reasoner)")
    ap.add_argument("--n", type=int, default=200, help="problems per point")
    ap.add_argument("--seed-start", type=int, default=None, help="default: EVAL_SEED_BASE")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--difficulty", type=int, default=None,
                    help="steps per problem (default: the task's own mix, traces ~1,540 tokens)")
    ap.add_argument("--fractions", type=lambda s: [float(x) for x in s.split(",")], default=[0.05, 0.1, 0.16, 0.25, 0.5])
    ap.add_argument("--methods", type=lambda s: s.split(","), default=list(METHODS))
    ap.add_argument("--buffer", type=int, default=128)
    ap.add_argument("--window", type=int, default=8)
    ap.add_argument("--threads", type=int, default=None, help="torch threads per process")
    ap.add_argument("--shard", default="0/1", help="i/k: run every k-th point starting at i")
    ap.add_argument("--work-dir", default="/tmp/rkv_accuracy", help="per-shard partial results")
    ap.add_argument("--report", action="store_true", help="only merge the shards and write the report")
    ap.add_argument("--note", default="", help="caveat printed under the title (e.g. which checkpoint)")
    ap.add_argument("--weights", default="", help="which weights of the model, for the plot's title (e.g. a date)")
    ap.add_argument("--out", default="benchmarks/results/rkv_accuracy")
    ap.add_argument("--replot-from", default=None, metavar="JSON",
                    help="only redraw JSON's PNG (next to it) from the result file; --weights/--machine label it")
    ap.add_argument("--machine", default=None, help="with --replot-from: the machine as the title names it")
    args = ap.parse_args()
    if args.replot_from:
        src = Path(args.replot_from)
        _plot(src.with_suffix(".png"), json.loads(src.read_text()), weights=args.weights, machine=args.machine)
        print(f"wrote {src.with_suffix('.png')}")
        return
    from tessera.tasks.reasoning import EVAL_SEED_BASE, make_problem

    if args.threads:
        torch.set_num_threads(args.threads)
    args.seed_start = EVAL_SEED_BASE if args.seed_start is None else args.seed_start
    unknown = set(args.methods) - set(METHODS)
    if unknown:
        raise SystemExit(f"unknown methods {sorted(unknown)}; known: {', '.join(METHODS)}")
    # Average reference trace over the first 200 problems whatever --n is, so budgets in tokens do
    # not change with n. Word count = token count (one token per word) + the end-of-sequence token.
    avg = statistics.mean(len(make_problem(s, args.difficulty).solution.split()) + 1
                          for s in range(args.seed_start, args.seed_start + max(args.n, 200)))
    work = Path(args.work_dir) / f"n{args.n}_s{args.seed_start}_d{args.difficulty}_buf{args.buffer}_w{args.window}"
    work.mkdir(parents=True, exist_ok=True)
    if not args.report:
        run_shard(args, avg, work)
    if args.report or args.shard == "0/1":
        report(args, avg, work)


if __name__ == "__main__":
    main()
