"""Token selection: greedy, temperature, top-k and top-p (nucleus) sampling.

Each sequence draws from its own generator seeded by (seed, sequence index), so a sampled
sequence does not change when other sequences join or leave the batch.
"""

from __future__ import annotations

import torch

from tessera.config import SamplingParams


def make_generators(sp: SamplingParams, n: int, device) -> list[torch.Generator] | None:
    if sp.temperature == 0:
        return None
    seed = sp.seed if sp.seed is not None else int(torch.randint(0, 2**31 - 1, ()).item())
    gens = []
    for i in range(n):
        g = torch.Generator(device=device)
        g.manual_seed(seed * 1_000_003 + i)
        gens.append(g)
    return gens


def sample(logits: torch.Tensor, sp: SamplingParams, gens: list[torch.Generator] | None, rows) -> torch.Tensor:
    """logits [B, V] -> token ids [B]. `rows` maps batch rows to sequence indices (for gens)."""
    if sp.temperature == 0:
        return logits.argmax(-1)
    probs_logits = logits.float() / sp.temperature
    if sp.top_k:
        kth = torch.topk(probs_logits, min(sp.top_k, probs_logits.shape[-1]), dim=-1).values[:, -1:]
        probs_logits = probs_logits.masked_fill(probs_logits < kth, float("-inf"))
    probs = probs_logits.softmax(-1)
    if sp.top_p < 1.0:
        sorted_p, order = probs.sort(-1, descending=True)
        # drop a token when the mass strictly before it already reaches top_p (keeps at least one)
        drop = (sorted_p.cumsum(-1) - sorted_p) >= sp.top_p
        sorted_p = sorted_p.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
    out = torch.empty(probs.shape[0], dtype=torch.long, device=probs.device)
    for i, r in enumerate(rows):
        out[i] = torch.multinomial(probs[i], 1, generator=gens[r])[0]
    return out
