"""Teacher-forced error of a press: the reference trace is fed token by token, the cache compressed as in
generation, and every next-token prediction compared with the reference.

Accuracy of generated answers is a coarse, noisy metric (one bit per problem, and a compressed run that
drifts early can still recover). Teacher forcing gives a low-variance second one per problem: the share of
trace tokens whose greedy prediction is wrong, and the position of the first wrong one. The press runs its
schedule exactly as while decoding (`after_prefill`, then `after_decode` with the decode steps so far), on
the reference's tokens instead of the model's own.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from tessera.kv.cache import StepContext
from tessera.kv.presses import Press
from tessera.kv.registry import make_cache


@torch.inference_mode()
def teacher_forced(llm, problems, press_factory: Callable[[], Press] | None = None, batch_size: int = 8) -> list[dict]:
    """-> per problem {"seed", "tokens", "errors", "error_rate", "first_divergence"} (the index into the trace
    tokens of the first wrong greedy prediction, None if there is none). Trace = solution + end of sequence."""
    if llm.tokenizer is None:
        raise ValueError("teacher_forced needs a model with a tokenizer")
    tok, model, dev = llm.tokenizer, llm.model, llm.device
    order = sorted(problems, key=lambda p: len(p.solution.split()))  # similar lengths share a batch
    out = []
    for i in range(0, len(order), batch_size):
        batch = order[i:i + batch_size]
        prompts = [tok.encode(p.prompt) for p in batch]
        refs = [tok.encode(p.solution, add_bos=False) + [tok.eos_id] for p in batch]
        B, T = len(batch), max(len(r) for r in refs)
        press = press_factory() if press_factory else None
        cache = make_cache("dense", model.config, B, llm.dtype, dev, press)
        lens = torch.tensor([len(p) for p in prompts], device=dev)
        inp = torch.zeros(B, int(lens.max()), dtype=torch.long, device=dev)  # right-padded [B, S]
        for b, p in enumerate(prompts):
            inp[b, :len(p)] = torch.tensor(p, device=dev)
        pos = torch.arange(inp.shape[1], device=dev).expand(B, -1)
        logits = model(inp, pos, cache, StepContext(pos, lens, True), logits_index=lens - 1)[:, -1]  # [B, V]
        if press is not None:
            press.after_prefill(cache, torch.zeros(B, dtype=torch.long, device=dev))
        ref = torch.tensor([r + [tok.eos_id] * (T - len(r)) for r in refs], device=dev)  # [B, T], padded with EOS
        pred = torch.empty(B, T, dtype=torch.long, device=dev)
        seq = lens.clone()
        for t in range(T):
            pred[:, t] = logits.argmax(-1)
            if t == T - 1:
                break
            step = StepContext(seq[:, None], torch.ones(B, dtype=torch.long, device=dev), False)
            logits = model(ref[:, t:t + 1], seq[:, None], cache, step)[:, -1]
            seq = seq + 1
            if press is not None:
                press.after_decode(cache, torch.full((B,), t + 1, dtype=torch.long, device=dev))
        for b, p in enumerate(batch):
            n = len(refs[b])
            wrong = (pred[b, :n] != ref[b, :n]).nonzero()
            out.append({"seed": p.seed, "tokens": n, "errors": len(wrong), "error_rate": len(wrong) / n,
                        "first_divergence": int(wrong[0]) if len(wrong) else None})
    return sorted(out, key=lambda r: r["seed"])
