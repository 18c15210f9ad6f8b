"""RULER accuracy at 8K-32K: full attention vs ShadowKV vs a Quest-style baseline at the same sparse budgets.

ShadowKV's accuracy table (arXiv 2410.21465, Table 1-2) on the embedded model and our RULER-style tasks
(`tessera.tasks.ruler`, held-out seeds from 1,000,000; the tasks cycle niah_single, niah_multikey,
variable_tracking). Budgets are fractions of the context (1.56%, 3%, 6% by default), in tokens per KV head
and step, rounded to a multiple of 16 (a whole number of ShadowKV chunks and Quest pages); ShadowKV's
outlier chunks and local window and Quest's local window come on top, as in both papers.

All three prefill with dense attention, so the prompt is prefilled *once* per problem: the dense cache
computes the attention and the sparse backends `ingest` the same keys and values; then each method decodes
the answer greedily on its own cache. Results are appended per problem to `<out>.jsonl` (a rerun resumes),
and `--report` writes `<out>.{json,md,png}`; `--replot-from <out>.json` redraws the PNG from the result file
alone (seconds, nothing rerun).

    python benchmarks/bench_shadowkv_accuracy.py --n 100 --lengths 8192 16384 32768   # ~40 min, 2 cores
    python benchmarks/bench_shadowkv_accuracy.py --report
    # bounds landmarks at the landmark bytes of the paper's mean landmarks, in a file of its own:
    python benchmarks/bench_shadowkv_accuracy.py --methods shadowkv shadowkv-bounds16 --lengths 8192 16384 \
        --out benchmarks/results/shadowkv_bounds16
    python benchmarks/bench_shadowkv_accuracy.py --replot-from benchmarks/results/shadowkv_accuracy.json \
        --weights "stage-4 weights (2026-11-27)" --machine "NVIDIA H200, fp32"
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from tessera.kv import make_cache
from tessera.kv.cache import StepContext
from tessera.kv.presses import NoPress
from tessera.kv.shared_prefill import SharedPrefill
from tessera.tasks.reasoning import EVAL_SEED_BASE
from tessera.tasks.ruler import TASKS, make_problem, score

OUT = Path("benchmarks/results/shadowkv_accuracy")


def budget_tokens(frac: float, length: int) -> int:
    return max(16, round(frac * length / 16) * 16)


# sparse methods by name: (backend, options besides the budget). "shadowkv-bounds16" has bounds landmarks
# over 16-token chunks: the landmark bytes of mean landmarks over 8 (2D per 16 tokens = D per 8), and half the
# chunks of outliers and local window, so that its dense tokens match the others' too.
METHODS = {
    "shadowkv": ("shadowkv", {}),
    "quest": ("quest", {}),
    "shadowkv-bounds": ("shadowkv", {"landmark": "bounds"}),
    "shadowkv-bounds16": ("shadowkv", {"landmark": "bounds", "chunk_size": 16, "outlier_chunks": 24, "local_chunks": 2}),
}


LABELS = {"shadowkv": "ShadowKV (mean landmarks, chunks of 8)", "quest": "Quest (pages of 16)",
          "shadowkv-bounds": "ShadowKV (bounds landmarks, chunks of 8)",
          "shadowkv-bounds16": "ShadowKV (bounds landmarks, chunks of 16)"}


def methods(length: int, fracs: list[float], names=("shadowkv", "quest")) -> list[tuple[str, str, float, dict]]:
    """(label, backend, budget fraction, options); the dense one first, then `names` (keys of METHODS) at
    every budget."""
    out = [("full", "dense", 1.0, {})]
    for f in fracs:
        b = budget_tokens(f, length)
        out += [(f"{m}@{f:g}", METHODS[m][0], f, {"sparse_budget": b, **METHODS[m][1]}) for m in names]
    return out


@torch.inference_mode()
def solve(model, ids: list[int], specs, max_new: int) -> list[list[int]]:
    """Greedy answers of every method in `specs` for one prompt (one shared dense prefill)."""
    cfg, dev = model.config, model.lm_head.weight.device
    caches = [make_cache(backend, cfg, 1, torch.float32, dev, NoPress(), **opts) for _, backend, _, opts in specs]
    S = len(ids)
    inp = torch.tensor([ids], device=dev)
    pos = torch.arange(S, device=dev)[None]
    logits = model(inp, pos, SharedPrefill(caches[0], caches[1:]),
                   StepContext(pos, torch.tensor([S], device=dev), True), logits_index=torch.tensor([S - 1], device=dev))
    first = int(logits[0, -1].argmax())
    outs = []
    for cache in caches:
        toks = [first]
        for i in range(max_new - 1):
            p = torch.tensor([[S + i]], device=dev)
            lg = model(torch.tensor([[toks[-1]]], device=dev), p, cache, StepContext(p, torch.ones(1, dtype=torch.long, device=dev), False))
            toks.append(int(lg[0, -1].argmax()))
        outs.append(toks)
    return outs


def device_name(device: str) -> str:
    """What a result line records about where it ran (answers agree across devices: 60 of 60 identical
    outputs at 16K between this CPU and an H200, 2026-11-27)."""
    if device.startswith("cuda"):
        return f"cuda ({torch.cuda.get_device_name(torch.device(device))}), fp32"
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads), fp32"


def run(args):
    from tqdm import tqdm

    from tessera.engine import LLM

    torch.set_num_threads(args.threads)
    llm = LLM.load(args.model, device=args.device, dtype=torch.float32)  # fp32 as on the CPU: same answers
    model, tok = llm.model.eval(), llm.tokenizer
    log = Path(f"{args.out}.jsonl")
    done = set()
    if log.is_file():
        done = {(r["length"], r["seed"]) for r in map(json.loads, log.read_text().splitlines())}
    jobs = [(L, EVAL_SEED_BASE + i) for L in args.lengths for i in range(args.n) if (L, EVAL_SEED_BASE + i) not in done]
    with log.open("a") as f:
        where = device_name(args.device)
        for L, seed in tqdm(jobs, desc="problems", unit="prob"):
            p = make_problem(TASKS[(seed - EVAL_SEED_BASE) % len(TASKS)], seed, L)
            ids = tok.encode(p.prompt)
            if len(ids) >= model.config.max_position_embeddings:
                raise ValueError(f"{len(ids)}-token prompt exceeds the model's {model.config.max_position_embeddings} positions")
            specs = methods(L, args.budgets, args.methods)
            t0 = time.perf_counter()
            outs = solve(model, ids, specs, max_new=len(" ".join(p.answers).split()) + 1)
            rec = dict(length=L, seed=seed, task=p.task, tokens=len(ids), seconds=round(time.perf_counter() - t0, 2),
                       device=where, answers=p.answers, results={})
            for (label, _, _, opts), o in zip(specs, outs):
                text = tok.decode(o)
                rec["results"][label] = dict(score=score(p, text), output=text, budget=opts.get("sparse_budget"))
            f.write(json.dumps(rec) + "\n")
            f.flush()


def report(args):
    rows = [json.loads(x) for x in Path(f"{args.out}.jsonl").read_text().splitlines()]
    lengths = sorted({r["length"] for r in rows})
    labels = list(rows[0]["results"])
    table = {}
    for L in lengths:
        rs = [r for r in rows if r["length"] == L]
        for lab in labels:
            sc = [r["results"][lab]["score"] for r in rs]
            by_task = {t: 100 * sum(r["results"][lab]["score"] for r in rs if r["task"] == t) /
                       max(1, sum(r["task"] == t for r in rs)) for t in TASKS}
            table[f"{L}/{lab}"] = dict(length=L, method=lab.split("@")[0], budget_frac=float(lab.split("@")[1]) if "@" in lab else 1.0,
                                       budget_tokens=rs[0]["results"][lab]["budget"], n=len(sc), accuracy=100 * sum(sc) / len(sc),
                                       by_task=by_task)
    for v in table.values():
        v["of_full"] = v["accuracy"] / max(1e-9, table[f"{v['length']}/full"]["accuracy"])
    meta = dict(machine=", ".join(sorted({r.get("device", "cpu") for r in rows})),
                model=args.model or "embedded (tessera/assets/tiny-reasoner)", seeds=f"{EVAL_SEED_BASE}..", tasks=list(TASKS),
                note="one shared dense prefill per problem; greedy answers; RULER string_match_all on whole words",
                **({"weights": args.weights} if args.weights else {}))
    Path(f"{args.out}.json").write_text(json.dumps(dict(meta=meta, points=table), indent=2))
    lines = ["| context | method | budget | n | accuracy % | of full | " + " | ".join(TASKS) + " |",
             "|---|---|---|---|---|---|" + "---|" * len(TASKS)]
    for v in table.values():
        bud = "all" if v["method"] == "full" else f"{100 * v['budget_frac']:.2f}% ({v['budget_tokens']} tok)"
        lines.append(f"| {v['length'] // 1024}K | {v['method']} | {bud} | {v['n']} | {v['accuracy']:.1f} | "
                     f"{100 * v['of_full']:.0f}% | " + " | ".join(f"{v['by_task'][t]:.0f}" for t in TASKS) + " |")
    Path(f"{args.out}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    _plot(Path(f"{args.out}.png"), table, meta)


def _plot(path: Path, table: dict, meta: dict, weights: str | None = None, machine: str | None = None) -> None:
    """One panel per context length: accuracy against the sparse budget, full attention as a horizontal line.
    Methods are shifted a little sideways and differ in marker and line style, so that equal scores (common:
    a problem is right or wrong for every method alike) stay visible; the y axis is shared and spans the data
    with a point of margin. The title names the model, its weights and the machine."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts_all = list(table.values())
    lengths = sorted({v["length"] for v in pts_all})
    names = [m for m in METHODS if any(v["method"] == m for v in pts_all)]
    styles = [("o", "-"), ("s", "--"), ("D", "-."), ("^", ":")]
    fig, axes = plt.subplots(1, len(lengths), figsize=(4.2 * len(lengths), 3.9), sharey=True, squeeze=False)
    for ax, L in zip(axes[0], lengths):
        pts = [v for v in pts_all if v["length"] == L]
        full = next(v for v in pts if v["method"] == "full")
        ax.axhline(full["accuracy"], color="k", ls=(0, (5, 3)), lw=1.2, label="full attention", zorder=3)
        fracs = sorted({v["budget_frac"] for v in pts if v["method"] != "full"})
        for i, m in enumerate(names):
            mp = sorted((v["budget_frac"], v["accuracy"]) for v in pts if v["method"] == m)
            if not mp:
                continue
            shift = 1 + 0.06 * (i - (len(names) - 1) / 2)  # multiplicative: equal spacing on the log axis
            marker, ls = styles[i % len(styles)]
            ax.plot([100 * f * shift for f, _ in mp], [a for _, a in mp], marker=marker, ls=ls, lw=1.6, ms=7,
                    label=LABELS.get(m, m))
        ax.set_xscale("log")
        ax.set_xticks([100 * f for f in fracs], [f"{100 * f:.3g}%" for f in fracs])
        ax.minorticks_off()
        ax.set_title(f"{L // 1024}K context, {full['n']} problems", fontsize=10)
        ax.set_xlabel("sparse budget, % of the context")
        ax.grid(alpha=0.3)
    acc = [v["accuracy"] for v in pts_all]
    axes[0][0].set_ylim(min(acc) - 1, min(100.5, max(acc) + 1))
    axes[0][0].set_ylabel("RULER accuracy, %")
    axes[0][-1].legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=9)
    weights = weights or meta.get("weights") or ""
    machine = machine or meta.get("machine", "")
    fig.suptitle(f"RULER (niah_single, niah_multikey, variable_tracking): {meta.get('model', 'embedded model')}"
                 f"{', ' + weights if weights else ''}; {machine}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="HF model dir (default: the embedded model)")
    ap.add_argument("--lengths", type=int, nargs="+", default=[8192, 16384, 32768], help="context lengths in words (= tokens)")
    ap.add_argument("--n", type=int, default=100, help="problems per context length")
    ap.add_argument("--budgets", type=float, nargs="+", default=[0.0156, 0.03, 0.06], help="sparse budgets, fraction of context")
    ap.add_argument("--methods", nargs="+", choices=list(METHODS), default=["shadowkv", "quest"],
                    help="sparse methods besides full attention")
    ap.add_argument("--bounds", action="store_true", help="also ShadowKV with min/max landmarks (= --methods ... shadowkv-bounds)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", help="cpu or cuda (ShadowKV then runs its Triton kernels)")
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--report", action="store_true", help="only summarise <out>.jsonl")
    ap.add_argument("--weights", default="", help="which weights of the model, for the plot's title (e.g. a date)")
    ap.add_argument("--replot-from", default=None, metavar="JSON",
                    help="only redraw JSON's PNG (next to it) from the result file; --weights/--machine label it")
    ap.add_argument("--machine", default=None, help="with --replot-from: the machine as the title names it")
    args = ap.parse_args()
    if args.replot_from:
        src = Path(args.replot_from)
        res = json.loads(src.read_text())
        _plot(src.with_suffix(".png"), res["points"], res["meta"], weights=args.weights, machine=args.machine)
        print(f"wrote {src.with_suffix('.png')}")
        return
    if args.bounds and "shadowkv-bounds" not in args.methods:
        args.methods.append("shadowkv-bounds")
    if not args.report:
        run(args)
    report(args)


if __name__ == "__main__":
    main()
