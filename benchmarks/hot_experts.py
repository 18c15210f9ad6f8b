"""Hot-expert replication on real routing: tokens per expert per layer of the embedded MoE reasoner
decoding held-out problems (the engine's GenerationStats.routing), then greedy min-max replication
(`tessera/parallel/disagg/replication.py`) over expert ranks, balancedness before and after.

    python benchmarks/hot_experts.py [--n 8] [--max-new-tokens 512] [--out benchmarks/results/hot_experts_cpu]

The routing file it writes (`{"routing": {layer: [tokens per expert]}}`) is what `tessera plan --routing` reads.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from machine import describe

from tessera.config import SamplingParams
from tessera.engine import LLM
from tessera.parallel.disagg import replication as rp
from tessera.tasks.reasoning import EVAL_SEED_BASE, make_problem

OUT = Path(__file__).resolve().parent / "results" / "hot_experts_cpu"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="moe")
    ap.add_argument("--n", type=int, default=8, help="held-out problems, decoded as one batch")
    ap.add_argument("--max-new-tokens", type=int, default=512)
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()
    llm = LLM.load(args.model)
    seeds = (EVAL_SEED_BASE, EVAL_SEED_BASE + args.n - 1)
    t0 = time.perf_counter()
    out = llm.generate([make_problem(EVAL_SEED_BASE + i).prompt for i in range(args.n)],
                       SamplingParams(max_new_tokens=args.max_new_tokens))
    wall = time.perf_counter() - t0
    routing = out.stats.routing
    rows = []
    for ranks in (2, 4):
        for spare in (0, 1, 2):
            for layer, counts in [("all", [sum(c[e] for c in routing.values()) for e in range(len(routing[0]))])] + \
                    list(routing.items()):
                before = rp.contiguous(counts, ranks)
                after = rp.replicate(counts, ranks, len(counts) // ranks + spare)
                rows.append({"layer": layer, "expert_ranks": ranks, "spare_slots_per_rank": spare,
                             "before": before.balancedness, "after": after.balancedness, "replicas": after.replicas,
                             "placement": after.ranks})
    res = {"question": "hot-expert replication on the embedded MoE reasoner's routing", "machine": describe(),
           "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()), "problems": args.n, "seeds": seeds,
           "max_new_tokens": args.max_new_tokens, "generated_tokens": out.stats.generated_tokens, "wall_s": wall,
           "routing": routing, "rows": rows}
    path = Path(args.out)
    path.with_suffix(".json").write_text(json.dumps(res, indent=2) + "\n")
    md = ["# Hot-expert replication on real routing (embedded MoE reasoner)", "",
          f"{res['date_utc']} UTC, {describe()}. {args.n} held-out problems (seeds {seeds[0]}..{seeds[1]}), greedy, at most "
          f"{args.max_new_tokens} new tokens each ({out.stats.generated_tokens} generated, prompts included in the counts). "
          "Balancedness = mean / max tokens per expert rank; before = experts split contiguously (what expert "
          "parallelism does), after = greedy min-max with spare slots.", "",
          "| layer | expert ranks | spare slots per rank | before | after | replicas per expert |", "|---|---|---|---|---|---|"]
    md += [f"| {r['layer']} | {r['expert_ranks']} | {r['spare_slots_per_rank']} | {r['before']:.3f} | {r['after']:.3f} | "
           f"{r['replicas']} |" for r in rows if r["layer"] == "all" or r["spare_slots_per_rank"] == 1]
    md += ["", "Tokens per expert per layer: "] + [f"- layer {i}: {c}" for i, c in routing.items()]
    path.with_suffix(".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
