"""Token selection for a batch whose rows carry their own settings: penalties, log-probabilities, then
greedy or sampled picks, rows grouped by (temperature, top-k, top-p) so each group is one call of
`tessera.layers.sampler.sample`. Each request draws from its own generator seeded by (seed, index), so a
sampled completion does not depend on which other requests share its batch."""

from __future__ import annotations

import torch

from tessera.config import SamplingParams
from tessera.engine.request import Request
from tessera.layers.sampler import sample


def make_generator(sp: SamplingParams, index: int, device) -> torch.Generator | None:
    """Completion `index`'s generator: seed * 1_000_003 + index (a fresh random seed when none is set)."""
    if sp.temperature == 0:
        return None
    seed = sp.seed if sp.seed is not None else int(torch.randint(0, 2**31 - 1, ()).item())
    g = torch.Generator(device=device)
    g.manual_seed((seed * 1_000_003 + index) % 2**64)
    return g


def apply_penalties(logits: torch.Tensor, reqs: list[Request]) -> torch.Tensor:
    """logits [B, V] -> penalised logits [B, V] (a copy, only if some row asks for a penalty).

    vLLM's semantics: presence / frequency over the generated tokens, repetition (CTRL) over prompt and
    generated tokens."""
    rows = [i for i, r in enumerate(reqs) if r.params.has_penalties]
    if not rows:
        return logits
    logits = logits.float().clone()
    V = logits.shape[-1]
    for i in rows:
        r, sp = reqs[i], reqs[i].params
        out = torch.tensor(r.stop.tokens, dtype=torch.long, device=logits.device)
        counts = torch.bincount(out, minlength=V)[:V].to(logits.dtype)  # [V]
        if sp.repetition_penalty != 1.0:
            seen = counts > 0
            seen[torch.tensor(r.prompt_ids, device=logits.device)] = True
            x = logits[i]
            pen = torch.where(x > 0, x / sp.repetition_penalty, x * sp.repetition_penalty)
            logits[i] = torch.where(seen, pen, x)
        logits[i] -= sp.frequency_penalty * counts + sp.presence_penalty * (counts > 0).to(logits.dtype)
    return logits


def token_logprobs(logits: torch.Tensor, reqs: list[Request], tokens: torch.Tensor) -> list[dict | None]:
    """Per row, {token: log p} of the sampled token and the k most likely (SamplingParams.logprobs = k)."""
    rows = [i for i, r in enumerate(reqs) if r.params.logprobs is not None]
    out: list[dict | None] = [None] * len(reqs)
    if not rows:
        return out
    lp = torch.log_softmax(logits[rows].float(), -1)  # [R, V]
    for j, i in enumerate(rows):
        k = reqs[i].params.logprobs
        d = {}
        if k:
            top = lp[j].topk(min(k, lp.shape[-1]))
            d = dict(zip(top.indices.tolist(), top.values.tolist()))
        d[int(tokens[i])] = float(lp[j, tokens[i]])
        out[i] = d
    return out


def sample_rows(logits: torch.Tensor, reqs: list[Request]) -> torch.Tensor:
    """logits [B, V] -> token ids [B], each row by its own request's settings and generator."""
    groups: dict[tuple, list[int]] = {}
    for i, r in enumerate(reqs):
        sp = r.params
        groups.setdefault((sp.temperature, sp.top_k, sp.top_p), []).append(i)
    if len(groups) == 1:
        return _sample(logits, reqs)
    out = torch.empty(len(reqs), dtype=torch.long, device=logits.device)
    for rows in groups.values():
        idx = torch.tensor(rows, device=logits.device)
        out[idx] = _sample(logits[idx], [reqs[i] for i in rows])
    return out


def _sample(logits: torch.Tensor, reqs: list[Request]) -> torch.Tensor:
    """One group of rows with the same temperature, top-k and top-p."""
    sp = reqs[0].params
    gens = None if sp.temperature == 0 else [r.generator for r in reqs]
    return sample(logits, sp, gens, range(len(reqs)))
