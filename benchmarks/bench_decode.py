"""Decode throughput: Tessera's engine vs transformers' `generate`, same model, dtype, batch, greedy.

Both sides generate exactly `--new-tokens` tokens per sequence (EOS ignored) from the same prompts
(held-out reasoning problems; transformers gets them left-padded with an attention mask). Tokens/s
= batch * new tokens / wall time of the whole call (prefill included), median over `--repeats`,
measured in the same run on the same machine. Writes `<out>.json` and `<out>.md`.

    python benchmarks/bench_decode.py                      # CPU, fp32, batch 1 and 8
    python benchmarks/bench_decode.py --device cuda --out benchmarks/results/decode_gpu
    python benchmarks/bench_decode.py --quant none,w8a8,w4a8 --out benchmarks/results/decode_quant
    python benchmarks/bench_decode.py --model moe --batch-sizes 1,8,32 --out benchmarks/results/decode_moe

`--quant`: one Tessera engine per listed mode (NGEMM int8 / int4-weight linears, lm_head stays fp;
`compiled`: fp with the decode step as one torch.compile graph, `LLM(..., compile=True)`, compiled in the
warm-up, outside the timing; `fused`: fp with q/k/v and gate/up fused, `tessera.quant.fuse_projections`; `w8a8-unfused` /
`w4a8-unfused`: quantized without that fusion), all timed in the same run
against the same fp transformers baseline; "identical outputs" then counts sequences equal to
transformers' fp tokens, which quantization may change.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from machine import describe


def sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="HF dir, or 'dense' / 'moe' (default: the embedded dense model)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--batch-sizes", default="1,8")
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quant", default="none", help="comma-separated Tessera variants: none, compiled, fused, w8a8, w4a8, w8a8-unfused, w4a8-unfused")
    ap.add_argument("--out", default="benchmarks/results/decode")
    args = ap.parse_args()

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tessera.config import SamplingParams
    from tessera.engine import LLM
    from tessera.engine.engine import resolve_model_path
    from tessera.tasks.reasoning import EVAL_SEED_BASE, make_problem

    path = resolve_model_path(args.model)  # a directory, or "dense" / "moe" for an embedded model
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if args.device.startswith("cuda") else torch.float32)
    quants = args.quant.split(",")
    if bad := set(quants) - {"none", "compiled", "fused", "w8a8", "w4a8", "w8a8-unfused", "w4a8-unfused"}:
        ap.error(f"--quant: unknown modes {sorted(bad)}")
    engines = {}
    for q in quants:
        engines[q] = LLM.load(path, device=args.device, dtype=dtype, compile=q == "compiled")
        if q not in ("none", "compiled"):
            from tessera.quant import fuse_projections, quantize_model

            if q == "fused":
                fuse_projections(engines[q].model)
            else:
                quantize_model(engines[q].model, q.removesuffix("-unfused"), fuse=not q.endswith("-unfused"))
    names = {q: "tessera" if q == "none" else f"tessera {q}" for q in quants}
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(args.device).eval()
    tok = AutoTokenizer.from_pretrained(path)
    tok.padding_side = "left"
    N = args.new_tokens
    rows = []
    for bs in [int(x) for x in args.batch_sizes.split(",")]:
        prompts = [make_problem(EVAL_SEED_BASE + 900_000 + i, difficulty=8).prompt for i in range(bs)]
        sp = SamplingParams(max_new_tokens=N, ignore_eos=True)
        enc = tok(prompts, return_tensors="pt", padding=True).to(args.device)

        def run_ours(q, prompts=prompts, sp=sp):
            return engines[q].generate(prompts, sp)

        def run_hf(enc=enc):
            with torch.inference_mode():
                return hf.generate(**enc, max_new_tokens=N, min_new_tokens=N, do_sample=False,
                                   pad_token_id=tok.pad_token_id)

        fns = {names[q]: (lambda q=q: run_ours(q)) for q in quants} | {"transformers": run_hf}
        times = {name: [] for name in fns}
        for fn in fns.values():  # warm-up
            fn()
        for _ in range(args.repeats):
            for name, fn in fns.items():
                sync(args.device)
                t0 = time.perf_counter()
                fn()
                sync(args.device)
                times[name].append(time.perf_counter() - t0)
        # same tokens? (greedy on the same weights should agree; report, don't hide)
        b = run_hf()[:, enc.input_ids.shape[1]:].tolist()
        r = {"batch": bs, "new_tokens": N}
        for q in quants:
            a = [c.token_ids for c in run_ours(q).completions]
            r[f"{names[q]}_identical_outputs"] = f"{sum(x == y for x, y in zip(a, b))}/{bs}"
        for name, ts in times.items():
            r[f"{name}_tok_s"] = bs * N / statistics.median(ts)
            r[f"{name}_spread_s"] = [min(ts), max(ts)]
        for q in quants:
            r[f"{names[q]}_speedup"] = r[f"{names[q]}_tok_s"] / r["transformers_tok_s"]
        if "none" in quants:  # the historical keys of the fp-only run
            r["identical_outputs"], r["speedup"] = r["tessera_identical_outputs"], r["tessera_speedup"]
        rows.append(r)
        print(f"batch {bs}: " + ", ".join(f"{n} {r[n + '_tok_s']:.0f} tok/s" for n in fns)
              + "; identical to transformers: " + ", ".join(f"{names[q]} {r[names[q] + '_identical_outputs']}" for q in quants),
              flush=True)

    meta = {"machine": describe(args.device), "device": args.device, "dtype": str(dtype), "model": str(path),
            "torch": torch.__version__, "repeats": args.repeats, "date": time.strftime("%Y-%m-%d"), "quant": quants}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    md = ["# Decode throughput: Tessera vs transformers `generate`\n",
          f"Machine: {meta['machine']} ({args.device}, {meta['dtype']}), torch {meta['torch']}, {meta['date']}. "
          f"Greedy, {N} new tokens per sequence, median of {args.repeats} repeats, all measured in the same run; "
          "quantized variants (if any) against the same fp transformers baseline.\n",
          "| batch | " + " | ".join(f"{names[q]} tok/s (vs transformers; identical outputs)" for q in quants)
          + " | transformers tok/s |", "|---|" + "---|" * (len(quants) + 1)]
    md += [f"| {r['batch']} | " + " | ".join(
        f"{r[names[q] + '_tok_s']:.0f} ({r[names[q] + '_speedup']:.2f}x; {r[names[q] + '_identical_outputs']})" for q in quants)
        + f" | {r['transformers_tok_s']:.0f} |" for r in rows]
    out.with_suffix(".md").write_text("\n".join(md) + "\n")
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
