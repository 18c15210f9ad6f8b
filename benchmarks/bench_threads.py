"""Torch CPU threads for the engine: prefill and decode with 1 vs 2 (or `--threads`) intra-op threads.

The same engine calls run under each thread count in turn, interleaved (1, 2, 1, 2, ...) so that a
machine whose load changes during the run affects both settings alike. Prefill: one forward over a batch
of prompts (`--prefill-batch` x `--prompt-tokens`). Decode: `generate` of `--new-tokens` tokens (EOS
ignored) at each batch size, tokens/s over the decode steps only. Medians and min-max over `--repeats`;
the ratios divide by the first thread count of the same run. The load average is recorded: on a shared
machine it says how busy the cores were. Writes `<out>.json` and `<out>.md`.

    python benchmarks/bench_threads.py --out benchmarks/results/threads_cpu
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch
from machine import describe


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="HF dir, or 'dense' / 'moe' (default: the embedded dense model)")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--batch-sizes", default="1,8")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--prefill-batch", type=int, default=4)
    ap.add_argument("--prompt-tokens", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default="benchmarks/results/threads_cpu")
    args = ap.parse_args()

    from tessera.config import SamplingParams
    from tessera.engine import LLM
    from tessera.kv import make_cache
    from tessera.kv.cache import StepContext
    from tessera.tasks.reasoning import EVAL_SEED_BASE, make_problem

    threads = [int(t) for t in args.threads.split(",")]
    batches = [int(b) for b in args.batch_sizes.split(",")]
    llm = LLM.load(args.model)
    cfg = llm.config
    prompts = [make_problem(EVAL_SEED_BASE + i).prompt for i in range(max(batches))]
    sp = SamplingParams(max_tokens=args.new_tokens, ignore_eos=True)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(4, cfg.vocab_size, (args.prefill_batch, args.prompt_tokens), generator=g)

    def prefill() -> float:
        B, S = ids.shape
        cache = make_cache("dense", cfg, B, llm.dtype, llm.device, None)
        pos = torch.arange(S).expand(B, S)
        ctx = StepContext(positions=pos, new_lens=torch.full((B,), S), is_prefill=True)
        t = time.perf_counter()
        with torch.inference_mode():
            llm.model(ids, pos, cache, ctx, logits_index=torch.full((B,), S - 1))
        return B * S / (time.perf_counter() - t)

    def decode(b: int) -> float:
        return llm.generate(prompts[:b], sp).stats.decode_tokens_per_s

    cases = {"prefill": prefill, **{f"decode_b{b}": (lambda b=b: decode(b)) for b in batches}}
    runs = {name: {t: [] for t in threads} for name in cases}
    load = [os.getloadavg()[0]]
    for name, fn in cases.items():
        torch.set_num_threads(threads[0])
        fn()  # warm-up
        for _ in range(args.repeats):
            for t in threads:
                torch.set_num_threads(t)
                runs[name][t].append(fn())
        load.append(os.getloadavg()[0])

    base = threads[0]
    rows = []
    for name in cases:
        for t in threads:
            xs = runs[name][t]
            rows.append({"case": name, "threads": t, "tokens_per_s_median": statistics.median(xs),
                         "min": min(xs), "max": max(xs),
                         f"ratio_vs_{base}": statistics.median(xs) / statistics.median(runs[name][base])})
    torch.set_num_threads(base)
    meta = {"machine": describe().rsplit(",", 1)[0], "cores": os.cpu_count(), "torch": torch.__version__,
            "model": str(args.model or "embedded dense"), "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
            "load_average_1min": load, "repeats": args.repeats, "new_tokens": args.new_tokens,
            "prefill_shape": [args.prefill_batch, args.prompt_tokens],
            "note": ("shared machine: other jobs were using the same cores (see the load average)" if max(load) > 2
                     else "quiet machine: nothing else running")}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    md = [f"# Torch threads: prefill and decode, {meta['model']}", "",
          f"{meta['machine']}, {meta['cores']} vCPUs, torch {meta['torch']}, {meta['date_utc']} UTC. "
          f"{meta['note']}; 1-minute load average during the run: "
          f"{', '.join(f'{x:.1f}' for x in load)}. Prefill: a forward over {args.prefill_batch} x "
          f"{args.prompt_tokens} tokens; decode: {args.new_tokens} tokens per sequence, decode steps only. "
          f"Median (min-max) of {args.repeats} interleaved repeats.", "",
          f"| case | threads | tokens/s | min-max | vs {base} thread(s) |", "|---|---|---|---|---|"]
    for r in rows:
        md.append(f"| {r['case']} | {r['threads']} | {r['tokens_per_s_median']:.0f} | {r['min']:.0f}-{r['max']:.0f} "
                  f"| {r[f'ratio_vs_{base}']:.2f}x |")
    out.with_suffix(".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
