"""Repeat-copy: random tokens x, then x again. The task that grows an induction head.

RULER retrieval (and any look-up by content) needs an induction-style circuit: find the earlier
place where the current context occurred and copy what followed (Olsson et al., "In-context Learning
and Induction Heads", 2022). On the second copy of x only such a circuit beats chance, so accuracy
there measures the head, and training on it forms one in a few hundred steps from scratch (a phase
change; trained weights that solved their look-ups positionally resist forming it: docs/shadowkv.md).

The length of x varies per sequence: with one fixed length a model solves the task by attending a
fixed distance back, without any content match (learnt in ~100 steps here, a trap for probes).
"""

from __future__ import annotations

import random

import torch

FIRST_ID = 3  # ids below are pad / bos / eos: never part of x
LENGTHS = (8, 48)  # lengths of x the training scripts draw from
HELD_OUT_SEED = 12345  # the fixed evaluation batch every script reports, so their numbers compare


def repeat_batch(rng: random.Random, vocab: int, batch: int, lo: int, hi: int, bos_id: int = 1):
    """-> ids [B, 2*hi+1] (BOS, x, x, then pad id 0), mask [B, 2*hi+1] (True on the predictable copy
    tokens: the second x after its first token), with len(x) drawn from [lo, hi] per row."""
    if not 2 <= lo <= hi:
        raise ValueError(f"need 2 <= lo <= hi, got lo={lo}, hi={hi}")
    if vocab <= FIRST_ID + 1:
        raise ValueError(f"vocabulary of {vocab} has no room for random tokens")
    ids = torch.zeros(batch, 2 * hi + 1, dtype=torch.long)
    mask = torch.zeros_like(ids, dtype=torch.bool)
    for b in range(batch):
        n = rng.randint(lo, hi)
        x = [rng.randrange(FIRST_ID, vocab) for _ in range(n)]
        ids[b, :2 * n + 1] = torch.tensor([bos_id] + x + x)
        mask[b, n + 2:2 * n + 1] = True  # targets are ids[:, 1:]: position t predicts t+1
    return ids, mask


def held_out_batch(vocab: int, bos_id: int = 1, lo: int = LENGTHS[0], hi: int = LENGTHS[1], batch: int = 64):
    """The fixed evaluation batch (`repeat_batch` from HELD_OUT_SEED): ids [B, 2*hi+1], mask [B, 2*hi+1]."""
    return repeat_batch(random.Random(HELD_OUT_SEED), vocab, batch, lo, hi, bos_id)


@torch.no_grad()
def copy_accuracy(forward, ids: torch.Tensor, mask: torch.Tensor) -> float:
    """Greedy next-token accuracy on the masked (second-copy) tokens; `forward(ids) -> logits`."""
    hit = forward(ids[:, :-1]).argmax(-1) == ids[:, 1:]  # [B, T-1]
    return hit[mask[:, 1:]].float().mean().item()
