"""KV memory and decode throughput of R-KV vs FullKV at long generations, in one run.

The embedded model stops at 4,096 positions, so this uses a model with the embedded model's width
(hidden 256, GQA 4/2 heads, head_dim 64, its vocabulary) and 6 layers, but *random weights* and
16,384 positions; EOS is ignored so every sequence generates exactly `--new-tokens` tokens (default
8,192) after a held-out problem prompt. Accuracy is not measured here (bench_rkv_accuracy.py).

Measured, same machine, same run:
  1. KV bytes per sequence (peak `cache.nbytes()` / batch) and decode tok/s at the same batch;
  2. the largest batch whose R-KV cache fits the memory FullKV needs at `--batch` (the cap), and
     the decode tok/s there (FullKV's largest batch under that cap is `--batch` by construction);
  3. compression overhead: time inside the press hook / decode time.

    python benchmarks/bench_rkv_efficiency.py                  # CPU
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
    ap.add_argument("--out", default="benchmarks/results/rkv_efficiency")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from bench_decode import machine  # same machine description as the decode benchmark

    from tessera.engine.engine import DEFAULT_MODEL
    from tessera.kv.presses import make_press
    from tessera.tasks.reasoning import EVAL_SEED_BASE, make_problem
    from tessera.tokenizer import Tokenizer

    llm = build(args)
    budget = round(args.fraction * args.new_tokens)
    tok = Tokenizer(DEFAULT_MODEL)  # the embedded tokenizer (committed); the weights are random
    ids = [tok.encode(make_problem(EVAL_SEED_BASE + 500_000 + i, difficulty=16).prompt) for i in range(args.max_batch)]

    def press():
        return make_press("rkv", budget=budget, buffer=args.buffer, window=args.window)

    t0 = time.perf_counter()
    warm = argparse.Namespace(**{**vars(args), "new_tokens": 64})  # first-call allocations, lazy inits
    run(llm, ids[: args.batch], warm, press())
    full = run(llm, ids[: args.batch], args)
    rkv = run(llm, ids[: args.batch], args, press())
    cap = full["peak_kv_bytes"]
    # largest R-KV batch under the cap, from the measured bytes per sequence; then measured there
    b = min(args.max_batch, int(cap // rkv["kv_bytes_per_sequence"]))
    capped = run(llm, ids[:b], args, press())
    while capped["peak_kv_bytes"] > cap and b > 1:  # the prediction was optimistic: step down
        b -= 1
        capped = run(llm, ids[:b], args, press())
    res = {
        "model": "embedded architecture, random weights, 16,384 positions", "device": args.device,
        "machine": machine(args.device), "dtype": str(next(llm.model.parameters()).dtype),
        "new_tokens": args.new_tokens, "prompt_tokens": [len(x) for x in ids[: args.batch]],
        "budget": budget, "buffer": args.buffer, "window": args.window,
        "equal_batch": {"full": full, "rkv": rkv,
                        "kv_ratio": rkv["kv_bytes_per_sequence"] / full["kv_bytes_per_sequence"],
                        "speedup": rkv["decode_tokens_per_s"] / full["decode_tokens_per_s"]},
        "memory_cap": {"cap_bytes": cap, "full_batch": args.batch, "rkv_batch": b, "rkv": capped,
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
           f"({100 * args.fraction:.0f}% of the generation), buffer {args.buffer}, window {args.window}. "
           "Written by `benchmarks/bench_rkv_efficiency.py`, one run, same machine."), "",
          "| | FullKV | R-KV | R-KV / FullKV |", "|---|---|---|---|",
          f"| KV bytes per sequence (peak) | {full['kv_bytes_per_sequence'] / mib:.2f} MiB | {rkv['kv_bytes_per_sequence'] / mib:.2f} MiB | {100 * eq['kv_ratio']:.1f}% |",
          f"| decode tok/s at batch {args.batch} | {full['decode_tokens_per_s']:.0f} | {rkv['decode_tokens_per_s']:.0f} | {eq['speedup']:.2f}x |",
          f"| largest batch under a {cap / mib:.1f} MiB KV cap | {args.batch} | {b} | {b / args.batch:.1f}x |",
          f"| decode tok/s at that batch | {full['decode_tokens_per_s']:.0f} | {capped['decode_tokens_per_s']:.0f} | {mc['throughput_ratio']:.2f}x |",
          f"| compression overhead (share of decode time) | - | {100 * rkv['overhead_share']:.1f}% (batch {args.batch}), {100 * capped['overhead_share']:.1f}% (batch {b}) | |",
          ""]
    out.with_suffix(".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
