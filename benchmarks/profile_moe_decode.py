"""Where an MoE decode step's FFN time goes on this CPU: router, permutation (sort and gather), expert
GEMMs, combine, timed piece by piece on the hidden states the embedded MoE reasoner really routes.

The MoE blocks' inputs are recorded during a greedy decode at each batch size (forward hooks), then each
piece of `tessera.layers.experts.experts_sorted` is replayed alone on those inputs, interleaved, median
over the recorded calls, beside the whole model step measured in the same run.

    python benchmarks/profile_moe_decode.py [--batch-sizes 1,8,32] [--new-tokens 64]

Writes benchmarks/results/moe_decode_profile_cpu.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from machine import describe

from tessera.config import SamplingParams
from tessera.engine import LLM
from tessera.layers import experts as X
from tessera.tasks.reasoning import EVAL_SEED_BASE, make_problem

OUT = Path(__file__).resolve().parent / "results" / "moe_decode_profile_cpu"




def _ms(fn, reps: int = 5) -> float:
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts) * 1e3


def _pieces(block, x: torch.Tensor) -> dict[str, float]:
    """ms of each piece of one MoE block call on x [B, 1, H], each replayed alone."""
    flat = x.reshape(-1, x.shape[-1])
    _, w, ids = block.gate(flat)
    E = block.experts.num_experts
    p = X.permute(ids, w, E)
    rows = flat[p.token]
    gu, dn = block.experts.gate_up_proj, block.experts.down_proj
    y = X.grouped_swiglu(rows, p.offsets, gu, dn)

    def gemms():
        X.grouped_swiglu(rows, p.offsets, gu, dn)

    return {"router": _ms(lambda: block.gate(flat)),
            "permute": _ms(lambda: (X.permute(ids, w, E), flat[p.token])),
            "expert GEMMs": _ms(gemms),
            "combine": _ms(lambda: X.combine(flat, p, y)),
            "whole block": _ms(lambda: block(x))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="moe")
    ap.add_argument("--batch-sizes", default="1,8,32")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()
    out_path = Path(args.out)
    llm = LLM.load(args.model)
    blocks = llm.model.moe_blocks()
    rows = []
    for bs in (int(b) for b in args.batch_sizes.split(",")):
        seen: list[tuple[int, torch.Tensor]] = []
        hooks = [b.register_forward_pre_hook(lambda m, a, i=i, seen=seen: seen.append((i, a[0].detach().clone())))
                 for i, b in blocks.items()]
        prompts = [make_problem(EVAL_SEED_BASE + 900_000 + j, difficulty=8).prompt for j in range(bs)]
        sp = SamplingParams(max_new_tokens=args.new_tokens, ignore_eos=True)
        with torch.inference_mode():
            t0 = time.perf_counter()
            res = llm.generate(prompts, sp)
            wall = time.perf_counter() - t0
        for h in hooks:
            h.remove()
        steps = res.stats.decode_steps
        decode = [(i, x) for i, x in seen if x.shape[1] == 1][-len(blocks) * min(steps, 32):]  # decode calls only
        parts: dict[str, list[float]] = {}
        with torch.inference_mode():
            for i, x in decode:
                for k, v in _pieces(blocks[i], x).items():
                    parts.setdefault(k, []).append(v)
        per_step = {k: statistics.median(v) * len(blocks) for k, v in parts.items()}  # ms per decode step
        step_ms = res.stats.decode_s / max(steps, 1) * 1e3
        rows.append({"batch": bs, "decode_step_ms": step_ms, "moe_ms_per_step": per_step,
                     "decode_tok_s": res.stats.decode_tokens_per_s, "wall_s": wall})
        print(f"batch {bs}: step {step_ms:.2f} ms; per step over {len(blocks)} MoE layers: "
              + ", ".join(f"{k} {v:.2f} ms" for k, v in per_step.items()), flush=True)
    meta = {"machine": describe(), "torch": torch.__version__,
            "model": str(args.model), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    out_path.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    keys = list(rows[0]["moe_ms_per_step"])
    md = [f"# Where the MoE FFN time goes in a decode step ({meta['machine']})", "",
          f"{meta['date']}, torch {meta['torch']}, the embedded MoE reasoner, fp32, greedy; each piece of the "
          "`sorted` experts backend replayed alone on the hidden states recorded during decoding, median, summed "
          "over the MoE layers. `python benchmarks/profile_moe_decode.py`.", "",
          "| batch | decode step ms | " + " | ".join(f"{k} ms" for k in keys) + " |",
          "|---:|---:|" + "---:|" * len(keys)]
    for r in rows:
        md.append(f"| {r['batch']} | {r['decode_step_ms']:.2f} | "
                  + " | ".join(f"{r['moe_ms_per_step'][k]:.2f}" for k in keys) + " |")
    out_path.with_suffix(".md").write_text("\n".join(md) + "\n")


if __name__ == "__main__":
    main()
