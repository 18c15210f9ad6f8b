"""KV memory and decode throughput of R-KV vs FullKV at long generations, in one run.

The embedded model stops at 4,096 positions, so this uses a model with the embedded model's width
(hidden 256, GQA 4/2 heads, head_dim 64, its vocabulary) and 6 layers, but *random weights* and
16,384 positions; EOS is ignored so every sequence generates exactly `--new-tokens` tokens (default
8,192) after a held-out problem prompt. Accuracy is not measured here (bench_rkv_accuracy.py).

Measured, same machine, same run:
  1. KV bytes per sequence (peak `cache.nbytes()` / batch) and decode tok/s at the same batch;
  2. the largest batch whose R-KV cache fits the memory FullKV needs at `--batch` (the cap), and
     the decode tok/s there (FullKV's largest batch under that cap is `--batch` by construction);
  3. compression overhead: time inside the press hook / decode time, for each scorer variant in
     `--variants` at the same batch (the first is the one measured under the cap): `impl=reference`
     builds the full n x n similarity matrix, `impl=auto` is the CPU row-block path or the fused Triton
     kernel (tessera/kernels/rkv), `buffer=512` compresses 4x less often on a larger cache.

    python benchmarks/bench_rkv_efficiency.py                  # CPU
    python benchmarks/bench_rkv_efficiency.py --new-tokens 3072 --fraction 0.3334 --no-cap --repeats 3 --threads 1 \
        --variants "impl=reference;impl=auto;impl=auto,buffer=512" --out benchmarks/results/rkv_compression_share_b1024
    python benchmarks/bench_rkv_efficiency.py --device cuda --batch 16 --out benchmarks/results/rkv_efficiency_gpu
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch


def build(args):
    from tessera.config import ModelConfig
    from tessera.engine import LLM
    from tessera.models import LlamaForCausalLM

    torch.manual_seed(0)
    from tessera.engine.engine import DEFAULT_MODEL
    from tessera.tokenizer import Tokenizer

    cfg = ModelConfig(vocab_size=Tokenizer(DEFAULT_MODEL).vocab_size, hidden_size=256, intermediate_size=768, num_hidden_layers=6,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=64, max_position_embeddings=16384,
                      eos_token_id=2, tie_word_embeddings=True)
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if args.device.startswith("cuda") else torch.float32)
    return LLM(LlamaForCausalLM(cfg).to(args.device, dtype))


def run(llm, prompts, args, press=None) -> dict:
    from tessera.config import SamplingParams

    hook_s = [0.0]
    if press is not None:  # time the press hook (where compression happens)
        inner = press.after_decode

        def timed(cache, decoded):
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            t = time.perf_counter()
            inner(cache, decoded)
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            hook_s[0] += time.perf_counter() - t

        press.after_decode = timed
    out = llm.generate(prompts, SamplingParams(max_new_tokens=args.new_tokens, ignore_eos=True), press=press)
    st = out.stats
    assert all(len(c.token_ids) == args.new_tokens for c in out.completions)
    return {"batch": len(prompts), "new_tokens": args.new_tokens, "decode_tokens_per_s": st.decode_tokens_per_s,
            "decode_s": st.decode_s, "peak_kv_bytes": st.peak_kv_bytes,
            "kv_bytes_per_sequence": st.peak_kv_bytes / len(prompts),
            "press_hook_s": hook_s[0], "overhead_share": hook_s[0] / st.decode_s if press is not None else 0.0,
            "compressions": getattr(press, "compressions", 0)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--new-tokens", type=int, default=8192)
    ap.add_argument("--batch", type=int, default=2, help="equal-batch comparison; its FullKV KV bytes are the cap")
    ap.add_argument("--fraction", type=float, default=0.10, help="R-KV budget as a fraction of --new-tokens")
    ap.add_argument("--buffer", type=int, default=128)
    ap.add_argument("--window", type=int, default=8)
    ap.add_argument("--max-batch", type=int, default=64, help="upper bound on the batch tried under the cap")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (CPU)")
    ap.add_argument("--variants", default="impl=auto",
                    help="R-KV settings run at --batch, ';'-separated, each 'key=value,...' (impl, buffer, lam, order)")
    ap.add_argument("--no-cap", action="store_true", help="skip the largest-batch-under-the-cap runs")
    ap.add_argument("--repeats", type=int, default=1, help="runs of FullKV and of each variant, interleaved; medians")
    ap.add_argument("--out", default="benchmarks/results/rkv_efficiency")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from machine import describe as machine  # the machine as every benchmark names it

    from tessera.engine.engine import DEFAULT_MODEL
    from tessera.kv.presses import make_press
    from tessera.tasks.reasoning import EVAL_SEED_BASE, make_problem
    from tessera.tokenizer import Tokenizer

    llm = build(args)
    budget = round(args.fraction * args.new_tokens)
    tok = Tokenizer(DEFAULT_MODEL)  # the embedded tokenizer (committed); the weights are random
    ids = [tok.encode(make_problem(EVAL_SEED_BASE + 500_000 + i, difficulty=16).prompt) for i in range(args.max_batch)]

    variants = [_parse_variant(v) for v in args.variants.split(";") if v.strip()]

    def press(v=None):
        kw = {"buffer": args.buffer, "window": args.window, **(v or variants[0])}
        return make_press("rkv", budget=budget, **kw)

    t0 = time.perf_counter()
    warm = argparse.Namespace(**{**vars(args), "new_tokens": 64})  # first-call allocations, lazy inits
    run(llm, ids[: args.batch], warm, press())
    # FullKV and every variant, --repeats times in turn, so that load on a shared machine hits all alike
    fulls, runs = [], [[] for _ in variants]
    for _ in range(args.repeats):
        fulls.append(run(llm, ids[: args.batch], args))
        for v, rs in zip(variants, runs):
            rs.append(run(llm, ids[: args.batch], args, press(v)))
    full = _median_run(fulls)
    per_variant = [{"variant": v, **_median_run(rs)} for v, rs in zip(variants, runs)]
    rkv = per_variant[0]
    cap = full["peak_kv_bytes"]
    # largest R-KV batch under the cap, from the measured bytes per sequence; then measured there
    b = min(args.max_batch, int(cap // rkv["kv_bytes_per_sequence"]))
    capped = run(llm, ids[:1], warm, press()) if args.no_cap else run(llm, ids[:b], args, press())
    while not args.no_cap and capped["peak_kv_bytes"] > cap and b > 1:  # the prediction was optimistic: step down
        b -= 1
        capped = run(llm, ids[:b], args, press())
    res = {
        "model": "embedded architecture, random weights, 16,384 positions", "device": args.device,
        "machine": machine(args.device), "dtype": str(next(llm.model.parameters()).dtype),
        "new_tokens": args.new_tokens, "prompt_tokens": [len(x) for x in ids[: args.batch]],
        "budget": budget, "buffer": args.buffer, "window": args.window, "variants": per_variant,
        "equal_batch": {"full": full, "rkv": rkv,
                        "kv_ratio": rkv["kv_bytes_per_sequence"] / full["kv_bytes_per_sequence"],
                        "speedup": rkv["decode_tokens_per_s"] / full["decode_tokens_per_s"]},
        "memory_cap": None if args.no_cap else {
            "cap_bytes": cap, "full_batch": args.batch, "rkv_batch": b, "rkv": capped,
            "throughput_ratio": capped["decode_tokens_per_s"] / full["decode_tokens_per_s"]},
        "wall_s": time.perf_counter() - t0,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(res, indent=2) + "\n")
    mib = 2**20
    eq, mc = res["equal_batch"], res["memory_cap"]
    md = [f"# R-KV efficiency vs FullKV ({res['machine']}, {res['dtype']})", "",
          (f"{res['model']}; {args.new_tokens} generated tokens per sequence after a "
           f"~{sum(res['prompt_tokens']) // len(res['prompt_tokens'])}-token prompt; R-KV budget {budget} tokens "
           f"({100 * args.fraction:.0f}% of the generation), buffer {args.buffer}, window {args.window}, "
           f"settings {_label(variants[0])}. Written by `benchmarks/bench_rkv_efficiency.py`, one run, same machine."), "",
          "| | FullKV | R-KV | R-KV / FullKV |", "|---|---|---|---|",
          f"| KV bytes per sequence (peak) | {full['kv_bytes_per_sequence'] / mib:.2f} MiB | {rkv['kv_bytes_per_sequence'] / mib:.2f} MiB | {100 * eq['kv_ratio']:.1f}% |",
          f"| decode tok/s at batch {args.batch} | {full['decode_tokens_per_s']:.0f} | {rkv['decode_tokens_per_s']:.0f} | {eq['speedup']:.2f}x |"]
    if mc:
        md += [f"| largest batch under a {cap / mib:.1f} MiB KV cap | {args.batch} | {b} | {b / args.batch:.1f}x |",
               f"| decode tok/s at that batch | {full['decode_tokens_per_s']:.0f} | {capped['decode_tokens_per_s']:.0f} | {mc['throughput_ratio']:.2f}x |",
               f"| compression overhead (share of decode time) | - | {100 * rkv['overhead_share']:.1f}% (batch {args.batch}), {100 * capped['overhead_share']:.1f}% (batch {b}) | |"]
    md += ["", (f"Compression step per R-KV setting at batch {args.batch} (same run; {args.repeats} interleaved runs each, "
                f"median [min-max]; FullKV {full['decode_tokens_per_s']:.1f}{_spread(full['all_decode_tokens_per_s'])} tok/s):"), "",
           "| R-KV setting | decode tok/s | vs FullKV | compressions | time in the press hook | share of decode time | peak KV per sequence |",
           "|---|---|---|---|---|---|---|"]
    for v in per_variant:
        md.append(f"| {_label(v['variant'])} | {v['decode_tokens_per_s']:.1f}{_spread(v['all_decode_tokens_per_s'])} "
                  f"| {v['decode_tokens_per_s'] / full['decode_tokens_per_s']:.2f}x "
                  f"| {v['compressions']} | {v['press_hook_s']:.1f} s{_spread(v['all_press_hook_s'])} "
                  f"| {100 * v['overhead_share']:.1f}%{_spread(v['all_overhead_share'], 100)} | {v['kv_bytes_per_sequence'] / mib:.2f} MiB |")
    md.append("")
    out.with_suffix(".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


def _median_run(rs: list[dict]) -> dict:
    """The run of median decode speed, with every run's tok/s and compression share beside it (the spread)."""
    mid = sorted(rs, key=lambda r: r["decode_tokens_per_s"])[len(rs) // 2]
    return {**mid, "repeats": len(rs), "all_decode_tokens_per_s": [r["decode_tokens_per_s"] for r in rs],
            "all_overhead_share": [r["overhead_share"] for r in rs], "all_press_hook_s": [r["press_hook_s"] for r in rs]}


def _spread(xs: list[float], scale: float = 1.0, fmt: str = ".1f") -> str:
    return f" [{scale * min(xs):{fmt}}-{scale * max(xs):{fmt}}]" if len(xs) > 1 else ""


def _parse_variant(text: str) -> dict:
    """'impl=auto,buffer=512' -> {'impl': 'auto', 'buffer': 512}"""
    kw = {}
    for item in filter(None, text.split(",")):
        k, _, v = item.partition("=")
        kw[k.strip()] = int(v) if v.strip().isdigit() else float(v) if v.replace(".", "", 1).isdigit() else v.strip()
    return kw


def _label(kw: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in kw.items()) or "defaults"


if __name__ == "__main__":
    main()
