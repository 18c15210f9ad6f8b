"""Which rules does a reasoner miss, and where does it look when it restates a result?

The reasoning task (`tessera.tasks.reasoning`) ends every trace with `the first result r1 = D`: a copy of a
value written ~1,000-3,500 tokens earlier. A model can also get it right without copying: `x -> x * a + b
mod 10` repeats with period 4 (or 2 or 1) for every multiplier but 6, where `r_k mod 5` steps by `b` and the
period is 5. So `r1` equals the latest `r_k` with `k = 1 mod 4`, a few dozen tokens back, on 7 rules in 8.
A model that learnt that shortcut misses the x * 6 problems and no others; this script shows both signs.

    python scripts/probe_lookup.py --eval runs/eval.json               # misses per rule multiplier
    python scripts/probe_lookup.py --model moe --seed 1000010          # attention at `the first result r1 =`
    python scripts/probe_lookup.py --model moe --seed 1000010 --cue last
    python scripts/probe_lookup.py --model runs/x/model --rule 6        # solve the 24 held-out x * 6 problems
    python scripts/probe_lookup.py --eval runs/eval.json --model runs/x/model --diff 32   # where misses go wrong
"""

from __future__ import annotations

import argparse
import json
from collections import Counter

import torch
import torch.nn.functional as F

from tessera.config import SamplingParams
from tessera.engine.engine import LLM, resolve_model_path
from tessera.models import load_model
from tessera.tasks.evaluate import evaluate
from tessera.tasks.reasoning import EVAL_SEED_BASE, make_problem
from tessera.tokenizer import Tokenizer


def rule_multiplier(seed: int) -> int:
    # prompt word 15 is the multiplier: `problem : a register starts at R . apply the rule x -> x * A`
    return int(make_problem(seed).prompt.split()[15])


def misses_by_rule(path: str) -> None:
    results = json.load(open(path))["results"]
    total, missed = Counter(), Counter()
    for r in results:
        a = rule_multiplier(r["seed"])
        total[a] += 1
        missed[a] += not r["correct"]
    print(f"{path}: {sum(missed.values())} misses in {len(results)} problems")
    for a in sorted(total):
        print(f"  x * {a}: {missed[a]:3d} missed of {total[a]:3d}")


def solve_rule(model_dir: str, a: int, n: int = 200, batch: int = 12) -> None:
    """Greedy accuracy on the held-out problems (`tessera eval`'s first `n` seeds) whose rule is x * a + b."""
    seeds = [s for s in range(EVAL_SEED_BASE, EVAL_SEED_BASE + n) if rule_multiplier(s) == a]
    res = evaluate(LLM.load(model_dir), seeds=seeds, batch_size=batch, progress=False, max_new_tokens=4000)
    print(f"{model_dir}: x * {a}: {res['correct']} / {len(seeds)} held-out problems solved")


def first_differences(model_dir: str, eval_path: str, n: int) -> None:
    """Regenerate the eval's first `n` misses greedily and print the first word that differs from the reference
    trace, with the words before it; a difference in the final sum `D + E = S` is named by which of its parts."""
    seeds = [r["seed"] for r in json.load(open(eval_path))["results"] if not r["correct"]][:n]
    problems = [make_problem(s) for s in seeds]
    out = LLM.load(model_dir).generate([p.prompt for p in problems], SamplingParams(max_new_tokens=4000))
    kinds = Counter()
    for s, p, c in zip(seeds, problems, out.completions):
        got, ref = c.text.split(), p.solution.split()
        i = next((i for i, (x, y) in enumerate(zip(got, ref)) if x != y), min(len(got), len(ref)))
        # the reference ends `... rN = E . D + E = S , mod 10 is A . answer : A`
        plus = max((k for k in range(len(ref)) if ref[k] == "+"), default=-1)
        kind = {plus - 1: "sum: first operand", plus + 1: "sum: second operand", plus + 3: "sum: addition"}.get(
            i, "restated result" if i >= len(ref) - 40 and i < plus else "trace" if i < plus else "after the sum")
        kinds[kind] += 1
        print(f"{s} {kind} @{i}/{len(ref)} | got {' '.join(got[max(0, i - 12):i + 3])} | "
              f"ref {' '.join(ref[max(0, i - 12):i + 3])}")
    print(dict(kinds))


def attention_at_lookup(model_dir: str, seed: int, cue: str, top: int = 3) -> None:
    """Top attended positions of every head at the query that predicts `cue result rK = D`'s D."""
    model, tok = load_model(model_dir).eval(), Tokenizer(model_dir)
    p = make_problem(seed)
    words = p.solution.split()
    j = next(i for i in range(len(words) - 3) if words[i:i + 2] == [cue, "result"] and words[i + 3] == "=")
    ids = tok.encode(p.prompt) + tok.encode(" ".join(words[:j + 4]), add_bos=False)
    text = [tok.decode([t]) for t in ids]
    probs = []  # per layer: [Hq, T] attention of the last query
    sdpa = F.scaled_dot_product_attention

    def recording_sdpa(q, k, v, is_causal=False, enable_gqa=False):  # q [B, Hq, S, D], k [B, Hkv, S, D]
        kk = k.repeat_interleave(q.shape[1] // k.shape[1], 1)
        probs.append(((q[0, :, -1:] @ kk[0].transpose(-1, -2)) / q.shape[-1] ** 0.5).softmax(-1)[:, 0])
        return sdpa(q, k, v, is_causal=is_causal, enable_gqa=enable_gqa)

    F.scaled_dot_product_attention = recording_sdpa  # the attention layer calls it through this module
    try:
        with torch.no_grad():
            out = model(torch.tensor([ids]))
    finally:
        F.scaled_dot_product_attention = sdpa
    logits = out if torch.is_tensor(out) else out[0]
    pred = logits[0, -1].softmax(-1).topk(3)
    # the trace's results: `so rK = D` once per step
    results = " ".join(f"{words[i + 1]}={words[i + 3]}" for i in range(len(words) - 3) if words[i] == "so")
    print(f"seed {seed}: rule x * {rule_multiplier(seed)}, {p.difficulty} steps; `{' '.join(words[j:j + 4])}` "
          f"target {words[j + 4]}, predicted " + ", ".join(f"{tok.decode([int(i)])} ({float(v):.2f})"
                                                            for v, i in zip(pred.values, pred.indices)))
    print(f"results: {results}")
    for layer, a in enumerate(probs):
        for h in range(a.shape[0]):
            v, i = a[h].topk(top)
            print(f"  layer {layer} head {h}: " + "   ".join(
                f"{float(x):.2f} @{int(t)} [{' '.join(text[max(0, int(t) - 3):int(t) + 1])}]" for x, t in zip(v, i)))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--eval", help="an eval JSON (`tessera eval --output`): misses per rule multiplier")
    ap.add_argument("--model", default="moe", help="HF-format model dir, or 'dense' / 'moe'")
    ap.add_argument("--seed", type=int, help="a problem seed: attention at its restated result")
    ap.add_argument("--rule", type=int, help="solve the held-out problems whose rule multiplies by this (2-9)")
    ap.add_argument("--diff", type=int, default=0, help="with --eval: regenerate its first N misses with --model "
                    "and print where each first differs from the reference")
    ap.add_argument("--cue", choices=("first", "last"), default="first", help="which restated result")
    args = ap.parse_args()
    if not args.eval and args.seed is None and args.rule is None:
        ap.error("give --eval, --seed or --rule")
    if args.rule is not None and not 2 <= args.rule <= 9:
        ap.error(f"--rule must be a multiplier in 2-9, got {args.rule}")
    if args.diff and not args.eval:
        ap.error("--diff needs --eval (the misses to regenerate)")
    if args.eval:
        misses_by_rule(args.eval)
    if args.diff:
        first_differences(str(resolve_model_path(args.model)), args.eval, args.diff)
    if args.seed is not None:
        attention_at_lookup(str(resolve_model_path(args.model)), args.seed, args.cue)
    if args.rule is not None:
        solve_rule(str(resolve_model_path(args.model)), args.rule)


if __name__ == "__main__":
    main()
