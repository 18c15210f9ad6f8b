"""Accuracy vs KV budget: FullKV, R-KV and its baselines on held-out reasoning problems, with paired statistics.

Every method decodes the same problems (seeds `--seed-start` .. `--seed-start + n - 1`) with the same
decode-time scheduler (`--buffer`, `--window`), greedy by default. `--sampling` is the paper's protocol
(arXiv 2505.24133: temperature 0.6, top-p 0.95, mean accuracy over samples; the paper draws 64): `--samples K`
(default 8) seeded samples per problem, sample j of problem s drawn with request seed s and index j, so every
method sees the same random stream per sample and reruns repeat it (`tessera.tasks.evaluate`); `--temperature`
and `--top-p` override the paper's values. A problem's outcome is then the mean of its K samples; the point's
accuracy is the mean over problems, and the paired statistics run on the per-problem means. Budgets are
fractions of the average reference trace (`--fractions`) and/or absolute token counts (`--budgets`). FullKV
runs in the same invocation, so every ratio is against a baseline from the same run and machine. The primary comparison is R-KV against the
authors' own baselines (`rkv-snapkv`: R-KV at lambda = 1, `rkv-h2o`: the last query's attention); our
paper-style `snapkv`, `streamingllm`, `h2o` run beside them.

Resumable and shardable: every finished problem is appended to `<work-dir>/<point>.<shard>.jsonl` (sampled:
`<point>.s<K>_t<T>_p<P>.<shard>.jsonl`, so greedy and sampled runs, or two sampling settings, never share a
file; a record of another mode in a file is refused), and a rerun skips the problems any shard already
wrote. `--shard i/k` takes every k-th *problem* (all points), so shards finish with complete pairs. `--teacher-forced` also feeds each reference trace through the press and
records the per-token error and the first divergence (`tessera.tasks.teacher_forced`), a low-variance
second metric. `--report` merges whatever exists into `<out>.json`, `.md` and `.png`: accuracy with a 95%
interval per point, and paired comparisons (sign test and bootstrap interval per problem,
`tessera.tasks.paired`) printed beside every "A beats B". `--replot-from <out>.json` redraws the PNG alone.

    python benchmarks/bench_rkv_accuracy.py --n 200                  # the issue's 200 problems per point
    python benchmarks/bench_rkv_accuracy.py --n 48 --shard 0/2 &     # two processes, then:
    python benchmarks/bench_rkv_accuracy.py --n 48 --shard 1/2; python benchmarks/bench_rkv_accuracy.py --n 48 --report
    python benchmarks/bench_rkv_accuracy.py --task long_reasoning --budgets 256,512,1024,2048,3072 --fractions "" --n 200
    python benchmarks/bench_rkv_accuracy.py --n 200 --sampling --samples 8   # 8x the greedy run's decoding
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

METHODS = {"rkv": "R-KV", "rkv-snapkv": "SnapKV (R-KV code)", "rkv-h2o": "H2O (R-KV code)",
           "rkv-published": "R-KV (published settings)", "snapkv": "SnapKV", "streamingllm": "StreamingLLM",
           "h2o": "H2O"}
DEFAULT_METHODS = ["rkv", "rkv-snapkv", "rkv-h2o", "snapkv", "streamingllm", "h2o"]


def machine() -> str:
    cpu = platform.processor() or "cpu"
    try:
        cpu = next(ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                   if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {torch.get_num_threads()} torch threads"


def points(args, avg: float) -> list[tuple[str, float | None, int | None]]:
    budgets = sorted({max(args.window + 1, round(f * avg)) for f in args.fractions} | set(args.budgets))
    return [("full", None, None)] + [(m, b / avg, b) for b in budgets for m in args.methods]


def decoding(args) -> dict:
    """The decoding protocol as the result file records it."""
    if not args.temperature:
        return {"mode": "greedy"}
    return {"mode": "sampling", "samples": args.samples, "temperature": args.temperature, "top_p": args.top_p}


def mode_tag(args) -> str:
    """'' for greedy (the file names of earlier runs), '.s<K>_t<T>_p<P>' for sampling: part of every result file's
    name and of every record, so that runs with different decoding never mix."""
    d = decoding(args)
    return "" if d["mode"] == "greedy" else f".s{d['samples']}_t{d['temperature']:g}_p{d['top_p']:g}"


def _done(work: Path, key: str, suffix: str = "", mode: str | None = None) -> dict[int, dict]:
    """seed -> record, from every shard's file of point `key`. `mode`: the tag every record must carry (records
    without one are greedy); a record of another mode raises SystemExit naming the file."""
    recs = {}
    for f in work.glob(f"{key}{suffix}.[0-9]*of[0-9]*.jsonl"):
        for line in f.read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                if mode is not None and r.get("mode", "") != mode:
                    raise SystemExit(f"{f} holds a record decoded as {r.get('mode') or 'greedy'!r}, not "
                                     f"{mode or 'greedy'!r}: runs with different decoding must not mix")
                recs[r["seed"]] = r
    return recs


def _append(path: Path, rec: dict) -> None:
    with path.open("a") as f:  # one line per problem, flushed: a cut-off run keeps everything it finished
        f.write(json.dumps(rec) + "\n")


def run_shard(args, avg: float, work: Path) -> None:
    from tessera.engine import LLM
    from tessera.kv.presses import make_press
    from tessera.tasks.evaluate import TASKS, evaluate
    from tessera.tasks.teacher_forced import teacher_forced

    llm = LLM.load(args.model)
    i, k = map(int, args.shard.split("/"))
    mine = [s for j, s in enumerate(range(args.seed_start, args.seed_start + args.n)) if j % k == i]
    tag = mode_tag(args)
    for m, _, b in points(args, avg):
        key = f"{m}@{b}"
        factory = None if m == "full" else (lambda m=m, b=b: make_press(m, budget=b, buffer=args.buffer, window=args.window))
        todo = [s for s in mine if s not in _done(work, key, tag, tag)]
        t0 = time.perf_counter()
        if todo:
            out = work / f"{key}{tag}.{i}of{k}.jsonl"
            # greedy records keep their earlier form (0/1 outcome, no mode); sampled ones the mean and the tag
            fix = {"mode": tag} if tag else {}
            evaluate(llm, seeds=todo, batch_size=args.batch_size, press_factory=factory, difficulty=args.difficulty,
                     progress=False, task=args.task, samples=args.samples, temperature=args.temperature,
                     top_p=args.top_p, max_new_tokens=args.max_new_tokens,
                     on_result=lambda r, m=m, b=b, out=out, fix=fix: _append(out, {
                         **r, "method": m, "budget": b, "correct": r["correct"] if tag else int(r["correct"]), **fix}))
        tf_todo = [s for s in mine if s not in _done(work, key, ".tf")] if args.teacher_forced else []
        if tf_todo:
            make = TASKS[args.task][0]
            tf_out = work / f"{key}.tf.{i}of{k}.jsonl"
            for r in teacher_forced(llm, [make(s, args.difficulty) for s in tf_todo], factory, args.batch_size):
                _append(tf_out, {**r, "method": m, "budget": b})
        done = _done(work, key, tag, tag)
        acc = sum(done[s]["correct"] for s in mine if s in done) / max(1, len(mine))
        print(f"[{time.strftime('%H:%M:%S')}] {key}: shard {i}/{k} accuracy {acc:.3f} on {len(mine)} problems "
              f"({len(todo)} run now, {time.perf_counter() - t0:.0f}s)", flush=True)


def report(args, avg: float, work: Path) -> None:
    from tessera.tasks.paired import compare, proportion_interval

    seeds = set(range(args.seed_start, args.seed_start + args.n))
    tag, dec = mode_tag(args), decoding(args)
    per, tf = {}, {}
    for m, _, b in points(args, avg):
        key = f"{m}@{b}"
        per[key] = {s: r for s, r in _done(work, key, tag, tag).items() if s in seeds}
        tf[key] = {s: r for s, r in _done(work, key, ".tf").items() if s in seeds}
    full_key = "full@None"
    if not per.get(full_key):
        raise SystemExit(f"no FullKV result yet ({'greedy' if not tag else tag[1:]}): nothing to compare against")

    def summary(m, f, b):
        # sampled: `correct` is a problem's mean over its samples, so c is a sum of means and c / n the mean
        # over problems of the per-problem mean; the Wilson interval stays valid, and conservative, for it
        # (see proportion_interval)
        recs = per[f"{m}@{b}"]
        n, c = len(recs), sum(r["correct"] for r in recs.values())
        lo, hi = proportion_interval(c, n)
        out = {"method": m, "fraction": f, "budget": b, "n": n, "correct": c, "accuracy": c / n if n else None,
               "ci": [lo, hi], "seeds": sorted(recs)[:1] + sorted(recs)[-1:],
               "mean_generated_tokens": sum(r["generated_tokens"] for r in recs.values()) / n if n else None}
        t = tf[f"{m}@{b}"]
        if t:
            fd = sorted(r["first_divergence"] for r in t.values() if r["first_divergence"] is not None)
            out["teacher_forced"] = {"n": len(t), "token_error": sum(r["errors"] for r in t.values()) / sum(
                r["tokens"] for r in t.values()), "median_first_divergence": fd[len(fd) // 2] if fd else None,
                "never_diverged": sum(r["first_divergence"] is None for r in t.values())}
        return out

    full = summary("full", None, None)
    rows = [summary(m, f, b) for m, f, b in points(args, avg)[1:] if per[f"{m}@{b}"]]
    for v in rows:
        v["vs_full"] = v["accuracy"] / full["accuracy"] if full["accuracy"] else None
    # paired comparisons on the problems both points solved: R-KV against each baseline and against FullKV
    outcome = {key: {s: r["correct"] for s, r in recs.items()} for key, recs in per.items()}
    tok_acc = {key: {s: 1 - r["error_rate"] for s, r in recs.items()} for key, recs in tf.items()}
    pairs, anchor = [], "rkv" if "rkv" in args.methods else args.methods[0]
    for v in rows:
        if v["method"] == anchor:
            continue
        a = f"{anchor}@{v['budget']}"
        if outcome.get(a):
            pairs.append({"budget": v["budget"], "metric": "accuracy", **compare(
                f"{METHODS[anchor]}@{v['budget']}", outcome[a], f"{METHODS[v['method']]}@{v['budget']}",
                outcome[f"{v['method']}@{v['budget']}"])})
            if tok_acc.get(a) and tok_acc.get(f"{v['method']}@{v['budget']}"):
                pairs.append({"budget": v["budget"], "metric": "teacher-forced token accuracy", **compare(
                    f"{METHODS[anchor]}@{v['budget']}", tok_acc[a], f"{METHODS[v['method']]}@{v['budget']}",
                    tok_acc[f"{v['method']}@{v['budget']}"], digits=3)})
    for v in rows:
        if v["method"] == anchor:
            pairs.append({"budget": v["budget"], "metric": "accuracy", **compare(
                f"{METHODS[anchor]}@{v['budget']}", outcome[f"{anchor}@{v['budget']}"], "FullKV", outcome[full_key])})
    res = {"model": str(args.model or "embedded tiny-reasoner"), "machine": machine(), "n": args.n, "task": args.task,
           "difficulty": args.difficulty,
           "seeds": [args.seed_start, args.seed_start + args.n - 1], "avg_trace_tokens": avg,
           "buffer": args.buffer, "window": args.window, "note": args.note, "weights": args.weights,
           "decoding": dec, "max_new_tokens": args.max_new_tokens, "full": full, "points": rows, "paired": pairs}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(res, indent=2) + "\n")
    budgets = sorted({v["budget"] for v in rows})
    ms = [m for m in METHODS if any(v["method"] == m for v in rows)]
    cell = {(v["method"], v["budget"]): v for v in rows}
    done_n = {v["n"] for v in rows} | {full["n"]}
    cnt = (lambda c: f"{c:.2f}") if tag else (lambda c: f"{c}")  # sampled: sums of per-problem means
    lines = [f"# Accuracy vs KV budget ({res['model']}, task {args.task})", "",
             *([f"**Note:** {args.note}", ""] if args.note else []),
             *([f"**Incomplete:** points hold {sorted(done_n)} of {args.n} problems.", ""] if done_n != {args.n} else []),
             (f"{args.n} held-out problems per point (seeds {res['seeds'][0]}..{res['seeds'][1]}, "
              f"{'the default difficulty mix' if args.difficulty is None else f'{args.difficulty} steps each'}), "
              f"{_describe(dec)}, buffer {args.buffer}, window {args.window}"
              f"{f', outputs cut at {args.max_new_tokens} tokens' if args.max_new_tokens else ''}; "
              f"average reference trace {avg:.0f} tokens. "
              f"Machine: {res['machine']}. Written by `benchmarks/bench_rkv_accuracy.py`."), "",
             (f"FullKV: **{full['accuracy']:.3f}** ({cnt(full['correct'])}/{full['n']}, 95% CI "
              f"[{full['ci'][0]:.3f}, {full['ci'][1]:.3f}])"
              + (f"; teacher-forced per-token error {100 * full['teacher_forced']['token_error']:.2f}%." if "teacher_forced" in full
                 else ".")), "",
             ("Mean accuracy over samples, averaged over problems (95% Wilson interval over problems, conservative "
              "for means) per budget:" if tag else "Accuracy (95% Wilson interval) per budget:"), "",
             "| budget | % of avg trace | " + " | ".join(METHODS[m] for m in ms) + " |",
             "|---|---|" + "---|" * len(ms)]
    for b in budgets:
        cells = [f"{cell[m, b]['accuracy']:.3f} [{cell[m, b]['ci'][0]:.2f}, {cell[m, b]['ci'][1]:.2f}]"
                 if (m, b) in cell else "-" for m in ms]
        lines.append(f"| {b} | {100 * b / avg:.0f}% | " + " | ".join(cells) + " |")
    if any("teacher_forced" in v for v in rows):
        lines += ["", "Teacher-forced: per-token error over the reference trace, median first divergence (tokens):", "",
                  "| budget | " + " | ".join(METHODS[m] for m in ms) + " |", "|---|" + "---|" * len(ms)]
        for b in budgets:
            cells = [(f"{100 * cell[m, b]['teacher_forced']['token_error']:.2f}%, "
                      f"{cell[m, b]['teacher_forced']['median_first_divergence']}")
                     if (m, b) in cell and "teacher_forced" in cell[m, b] else "-" for m in ms]
            lines.append(f"| {b} | " + " | ".join(cells) + " |")
    if pairs:
        lines += ["", "Paired comparisons (same problems; bootstrap interval of the difference, sign test"
                  + (" on the per-problem means, ties = equal means" if tag else "") + "):", ""]
        lines += [f"- {p['metric']}: {p['line']}" for p in pairs]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    _plot(out.with_suffix(".png"), res)
    print("\n".join(lines))


def _describe(dec: dict) -> str:
    """The decoding protocol in words."""
    if dec["mode"] == "greedy":
        return "greedy"
    return (f"sampled ({dec['samples']} samples per problem, temperature {dec['temperature']:g}, top-p "
            f"{dec['top_p']:g}; accuracy = mean over problems of the mean over samples)")


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
    styles = [("o", "-"), ("s", "--"), ("D", "-."), ("^", ":"), ("v", "-"), ("P", "--"), ("X", "-.")]
    fig, ax = plt.subplots(figsize=(8.5, 4.8))
    for i, m in enumerate(ms):
        pts = sorted((v["fraction"], v["accuracy"], v.get("ci")) for v in rows if v["method"] == m)
        shift = 1 + 0.05 * (i - (len(ms) - 1) / 2)  # multiplicative: equal spacing on the log axis
        marker, ls = styles[i % len(styles)]
        xs, ys = [100 * f * shift for f, _, _ in pts], [100 * a for _, a, _ in pts]
        line = ax.plot(xs, ys, marker=marker, ls=ls, lw=1.8, ms=7, label=METHODS.get(m, m))[0]
        if all(ci for _, _, ci in pts):  # 95% intervals, where the result file has them
            ax.errorbar(xs, ys, yerr=[[y - 100 * ci[0] for y, (_, _, ci) in zip(ys, pts)],
                                      [100 * ci[1] - y for y, (_, _, ci) in zip(ys, pts)]],
                        fmt="none", ecolor=line.get_color(), elinewidth=1, capsize=3, alpha=0.7)
    dec = res.get("decoding", {"mode": "greedy"})  # result files before sampling mode were all greedy
    sampled = dec["mode"] != "greedy"
    ax.axhline(100 * full["accuracy"], color="black", ls=(0, (5, 3)), lw=1.2,
               label=f"FullKV {100 * full['accuracy']:.1f}% "
                     f"({full['correct']:{'.2f' if sampled else ''}}/{full['n']})")
    budget = {v["fraction"]: v["budget"] for v in rows}
    ax.set_xscale("log")
    ax.set_xticks([100 * f for f in fracs], [f"{100 * f:.0f}%\n{budget[f]} tok" for f in fracs])
    ax.minorticks_off()
    ax.set_xlabel(f"KV budget per KV head: % of the average reference trace ({res['avg_trace_tokens']:.0f} tokens)")
    ax.set_ylabel(f"mean accuracy over {dec['samples']} samples, %" if sampled else "accuracy, % of problems")
    ax.set_ylim(0, 102)
    weights = weights or res.get("weights") or ""
    machine = (machine or res.get("machine", "")).replace("(R)", "")
    probe = "PROBE (not a result): " if "PROBE" in (res.get("note") or "") else ""
    ax.set_title(f"{probe}Accuracy vs KV budget: {res.get('model', 'embedded tiny-reasoner')}"
                 f"{', ' + weights if weights else ''}\n{machine}; {res['n']} held-out problems per point "
                 f"(seeds {res['seeds'][0]}..{res['seeds'][1]}),\n"
                 + ("greedy" if not sampled else f"{dec['samples']} samples (T {dec['temperature']:g}, top-p {dec['top_p']:g})")
                 + f", buffer {res['buffer']}, window {res['window']}",
                 fontsize=10)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="HF-format model dir (default: the embedded tiny reasoner)")
    ap.add_argument("--n", type=int, default=200, help="problems per point")
    ap.add_argument("--seed-start", type=int, default=None, help="default: EVAL_SEED_BASE")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--difficulty", type=int, default=None,
                    help="steps per problem (default: the task's own mix, traces ~1,540 tokens)")
    ap.add_argument("--task", default="reasoning", choices=["reasoning", "long_reasoning"])
    ap.add_argument("--fractions", type=lambda s: [float(x) for x in s.split(",") if x], default=[0.05, 0.1, 0.16, 0.25, 0.5],
                    help="budgets as fractions of the average reference trace ('' for none)")
    ap.add_argument("--budgets", type=lambda s: [int(x) for x in s.split(",") if x], default=[],
                    help="absolute budgets in tokens, e.g. 256,512,1024,2048,3072")
    ap.add_argument("--methods", type=lambda s: s.split(","), default=DEFAULT_METHODS)
    ap.add_argument("--teacher-forced", action="store_true", help="also the per-token error and first divergence")
    ap.add_argument("--sampling", action="store_true",
                    help="the paper's protocol: temperature 0.6, top-p 0.95, --samples per problem (default 8), mean accuracy")
    ap.add_argument("--samples", type=int, default=None, help="samples per problem when sampling (default 8; paper 64)")
    ap.add_argument("--temperature", type=float, default=None, help="sampling temperature (with --sampling: 0.6)")
    ap.add_argument("--top-p", type=float, default=None, help="nucleus sampling (with --sampling: 0.95)")
    ap.add_argument("--max-new-tokens", type=int, default=None,
                    help="cut outputs here (smoke runs; default: the task's cap); part of the work directory's name")
    ap.add_argument("--buffer", type=int, default=128)
    ap.add_argument("--window", type=int, default=8)
    ap.add_argument("--threads", type=int, default=None, help="torch threads per process")
    ap.add_argument("--shard", default="0/1", help="i/k: run every k-th point starting at i")
    ap.add_argument("--work-dir", default="runs/rkv_accuracy", help="per-problem results, one JSONL per point and shard")
    ap.add_argument("--report", action="store_true", help="only merge the shards and write the report")
    ap.add_argument("--note", default="", help="caveat printed under the title (e.g. which checkpoint)")
    ap.add_argument("--weights", default="", help="which weights of the model, for the plot's title (e.g. a date)")
    ap.add_argument("--out", default="benchmarks/results/rkv_accuracy")
    ap.add_argument("--replot-from", default=None, metavar="JSON",
                    help="only redraw JSON's PNG (next to it) from the result file; --weights/--machine label it")
    ap.add_argument("--machine", default=None, help="with --replot-from: the machine as the title names it")
    args = ap.parse_args(argv)
    _resolve_decoding(ap, args)
    if args.replot_from:
        src = Path(args.replot_from)
        _plot(src.with_suffix(".png"), json.loads(src.read_text()), weights=args.weights, machine=args.machine)
        print(f"wrote {src.with_suffix('.png')}")
        return
    from tessera.tasks.evaluate import TASKS
    from tessera.tasks.reasoning import EVAL_SEED_BASE

    if args.threads:
        torch.set_num_threads(args.threads)
    args.seed_start = EVAL_SEED_BASE if args.seed_start is None else args.seed_start
    unknown = set(args.methods) - set(METHODS)
    if unknown:
        raise SystemExit(f"unknown methods {sorted(unknown)}; known: {', '.join(METHODS)}")
    # Average reference trace over the first 200 problems whatever --n is, so budgets in tokens do
    # not change with n. Word count = token count (one token per word) + the end-of-sequence token.
    make_problem = TASKS[args.task][0]
    avg = statistics.mean(len(make_problem(s, args.difficulty).solution.split()) + 1
                          for s in range(args.seed_start, args.seed_start + max(args.n, 200)))
    # results are per problem, so a run with a larger --n reuses a smaller one's problems
    work = Path(args.work_dir) / (f"{args.task}_s{args.seed_start}_d{args.difficulty}_buf{args.buffer}_w{args.window}"
                                  + (f"_m{args.max_new_tokens}" if args.max_new_tokens else ""))
    work.mkdir(parents=True, exist_ok=True)
    if not args.report:
        run_shard(args, avg, work)
    if args.report or args.shard == "0/1":
        report(args, avg, work)


def _resolve_decoding(ap, args) -> None:
    """--sampling / --samples / --temperature / --top-p -> args.samples, .temperature, .top_p (temperature 0 = greedy).
    Sampling is on with --sampling or a temperature > 0; the paper's values fill what is not given. A sampled run
    writes to `<out>_sampling` unless --out is given, so that it does not overwrite the greedy result."""
    sampling = args.sampling or bool(args.temperature)
    if args.sampling and args.temperature == 0:
        ap.error("--sampling needs a temperature > 0 (temperature 0 is greedy)")
    if not sampling:
        if args.samples not in (None, 1) or args.top_p is not None:
            ap.error("--samples / --top-p need --sampling (or --temperature > 0): greedy gives one completion per problem")
        args.samples, args.temperature, args.top_p = 1, 0.0, 1.0
        return
    args.samples = 8 if args.samples is None else args.samples
    args.temperature = 0.6 if args.temperature is None else args.temperature
    args.top_p = 0.95 if args.top_p is None else args.top_p
    if args.samples < 1 or args.temperature < 0 or not 0 < args.top_p <= 1:
        ap.error(f"need --samples >= 1, --temperature >= 0, --top-p in (0, 1]; got {args.samples}, "
                 f"{args.temperature}, {args.top_p}")
    if args.out == ap.get_default("out"):
        args.out += "_sampling"


if __name__ == "__main__":
    main()
