"""Accuracy of a model (with a given press) on reasoning problems from a seed range."""

from __future__ import annotations

import time
from collections.abc import Callable

from tqdm.auto import tqdm

from tessera.config import SamplingParams
from tessera.kv.presses import Press
from tessera.tasks import long_reasoning, reasoning
from tessera.tasks.reasoning import EVAL_SEED_BASE

#: task name -> (make_problem(seed, difficulty), score(problem, text), generation cap in tokens)
TASKS = {
    "reasoning": (reasoning.make_problem, reasoning.score, reasoning.MAX_SOLUTION_TOKENS),
    "long_reasoning": (long_reasoning.make_problem, long_reasoning.score, long_reasoning.MAX_SOLUTION_TOKENS),
}


def evaluate(
    llm,
    n: int = 200,
    seed_start: int = EVAL_SEED_BASE,
    batch_size: int = 16,
    press_factory: Callable[[], Press] | None = None,
    difficulty: int | None = None,
    progress: bool = True,
    kv: str = "dense",
    kv_options: dict | None = None,
    task: str = "reasoning",
    seeds: list[int] | None = None,
    on_result: Callable[[dict], None] | None = None,
) -> dict:
    """Greedy-decode `n` problems (seeds seed_start .. seed_start+n-1, or exactly `seeds`) of `task` and score
    the answers. `on_result(record)` is called for every problem as soon as its batch is done (a resumable
    run appends it to a file).

    Problems are batched by difficulty so that a batch's traces have similar lengths.
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; known: {', '.join(TASKS)}")
    make_problem, score, cap = TASKS[task]
    seeds = list(range(seed_start, seed_start + n)) if seeds is None else list(seeds)
    n = len(seeds)
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    problems = sorted((make_problem(s, difficulty) for s in seeds), key=lambda p: p.difficulty)
    results, gen_tokens, peak, t0 = [], 0, 0, time.perf_counter()
    decode_s = 0.0
    routing: dict[int, list[int]] = {}  # MoE models: tokens per expert per layer, summed over the batches
    bar = tqdm(total=n, desc="eval", unit="problem", disable=not progress)
    for i in range(0, n, batch_size):
        batch = problems[i : i + batch_size]
        out = llm.generate([p.prompt for p in batch],
                           SamplingParams(max_new_tokens=min(cap, llm.config.max_position_embeddings)),
                           press=press_factory() if press_factory else None, kv=kv, kv_options=kv_options)
        for p, c in zip(batch, out.completions):
            results.append({"seed": p.seed, "difficulty": p.difficulty, "answer": p.answer,
                            "correct": score(p, c.text), "generated_tokens": len(c.token_ids),
                            "reference_tokens": len(p.solution.split()) + 1, "finish_reason": c.finish_reason})
            if on_result is not None:
                on_result(results[-1])
        gen_tokens += out.stats.generated_tokens
        decode_s += out.stats.prefill_s + out.stats.decode_s
        peak = max(peak, out.stats.peak_kv_bytes)
        for layer, counts in out.stats.routing.items():
            routing[layer] = [a + b for a, b in zip(routing.get(layer, [0] * len(counts)), counts)]
        bar.update(len(batch))
        bar.set_postfix(acc=f"{sum(r['correct'] for r in results) / len(results):.3f}")
    bar.close()
    results.sort(key=lambda r: r["seed"])
    correct = sum(r["correct"] for r in results)
    moe = {}
    if routing:
        moe = {"routing": {str(k): v for k, v in routing.items()},
               "balancedness": {str(k): (sum(v) / len(v)) / max(v) if max(v) else 1.0 for k, v in routing.items()}}
    return {
        "n": n,
        "seeds": [min(seeds), max(seeds)],
        "correct": correct,
        "accuracy": correct / n,
        "generated_tokens": gen_tokens,
        "mean_generated_tokens": gen_tokens / n,
        "tokens_per_s": gen_tokens / decode_s if decode_s else 0.0,
        "wall_s": time.perf_counter() - t0,
        "peak_kv_bytes": peak,
        "batch_size": batch_size,
        **moe,
        "results": results,
    }
