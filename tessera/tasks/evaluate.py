"""Accuracy of a model (with a given press) on reasoning problems from a seed range: greedy, or K seeded
samples per problem (mean accuracy, the R-KV paper's protocol: arXiv 2505.24133, temperature 0.6, top-p 0.95)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace

import torch
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
    samples: int = 1,
    temperature: float = 0.0,
    top_p: float = 1.0,
    max_new_tokens: int | None = None,
) -> dict:
    """Decode `n` problems (seeds seed_start .. seed_start+n-1, or exactly `seeds`) of `task` and score the
    answers. `on_result(record)` is called for every problem as soon as its batch is done (a resumable run
    appends it to a file). `max_new_tokens` caps the output (default: the task's cap).

    temperature 0 (default): greedy, one completion per problem, `correct` is 0/1. temperature > 0: `samples`
    completions per problem with top-p `top_p`; sample j of problem s draws from the engine's generator for
    request seed s and index j (`tessera.engine.sampling.make_generator`), i.e. exactly sample j of
    `llm.generate(prompt, SamplingParams(seed=s, n=samples, ...))` with the prompt alone. So a problem's
    samples do not depend on which other problems share its batch (reruns, resumed runs and every press see the
    same random stream per sample), and a larger `samples` extends a smaller run's samples. The record keeps
    each sample's outcome (`samples`, `samples_generated_tokens`, `finish_reasons`) and `correct` /
    `generated_tokens` are their means; the summary's accuracy is the mean over problems of those means.

    Problems are batched by difficulty so that a batch's traces have similar lengths; `batch_size` counts
    sequences, so a sampled batch holds batch_size // samples problems (at least one).
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
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    if temperature == 0 and samples != 1:
        raise ValueError(f"greedy decoding (temperature 0) gives one completion per problem; got samples={samples}")
    cap = min(cap, llm.config.max_position_embeddings) if max_new_tokens is None else max_new_tokens
    sp = SamplingParams(max_new_tokens=cap, temperature=temperature, top_p=top_p)
    per_batch = batch_size if temperature == 0 else max(1, batch_size // samples)
    problems = sorted((make_problem(s, difficulty) for s in seeds), key=lambda p: p.difficulty)
    results, gen_tokens, peak, t0 = [], 0, 0, time.perf_counter()
    decode_s = 0.0
    routing: dict[int, list[int]] = {}  # MoE models: tokens per expert per layer, summed over the batches
    bar = tqdm(total=n, desc="eval", unit="problem", disable=not progress)
    for i in range(0, n, per_batch):
        batch = problems[i : i + per_batch]
        press = press_factory() if press_factory else None
        if temperature == 0:
            out = llm.generate([p.prompt for p in batch], sp, press=press, kv=kv, kv_options=kv_options)
            stats = out.stats
            records = [{"seed": p.seed, "difficulty": p.difficulty, "answer": p.answer,
                        "correct": score(p, c.text), "generated_tokens": len(c.token_ids),
                        "reference_tokens": len(p.solution.split()) + 1, "finish_reason": c.finish_reason}
                       for p, c in zip(batch, out.completions)]
        else:
            comps, stats = _sample(llm, batch, sp, samples, press, kv, kv_options)
            records = []
            for p, cs in zip(batch, comps):
                ok = [int(score(p, c.text)) for c in cs]
                toks = [len(c.token_ids) for c in cs]
                records.append({"seed": p.seed, "difficulty": p.difficulty, "answer": p.answer,
                                "correct": sum(ok) / samples, "generated_tokens": sum(toks) / samples,
                                "reference_tokens": len(p.solution.split()) + 1, "samples": ok,
                                "samples_generated_tokens": toks, "finish_reasons": [c.finish_reason for c in cs]})
        for r in records:
            results.append(r)
            if on_result is not None:
                on_result(r)
        gen_tokens += stats.generated_tokens
        decode_s += stats.prefill_s + stats.decode_s
        peak = max(peak, stats.peak_kv_bytes)
        for layer, counts in stats.routing.items():
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


def _sample(llm, problems, sp: SamplingParams, samples: int, press, kv: str, kv_options: dict | None):
    """`samples` completions of each problem in one continuously batched run -> (completions per problem, stats).

    Through the step engine rather than `LLM.generate`, which numbers a call's requests 0, 1, ... across all its
    prompts (so a sample's generator would depend on its position in the batch): here problem s's sample j is
    request (seed s, index j) whatever else runs beside it. MoE routing counts are not collected on this path."""
    engine = llm.engine()
    for p, ids in zip(problems, llm.encode([p.prompt for p in problems])):
        for j in range(samples):
            engine.add_request(ids, replace(sp, seed=p.seed), press, kv, kv_options, request_id=f"{p.seed}:{j}",
                               index=j)
    done = {}
    with torch.inference_mode():
        while engine.has_unfinished():
            done.update((o.request_id, o.completion) for o in engine.step() if o.finished)
    return [[done[f"{p.seed}:{j}"] for j in range(samples)] for p in problems], engine.stats
