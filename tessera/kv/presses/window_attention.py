"""The attention of a scorer's window queries over its candidate keys (R-KV importance, SnapKV)."""

from __future__ import annotations

import torch

from tessera.kv.presses.scorer import Candidates


def window_attention(c: Candidates) -> torch.Tensor:
    """Attention of the W window queries over the candidate (non-window) keys: [R, Hkv, W, N] fp32.

    GQA as in R-KV's `compute_attention_scores(pooling="max")`: raw logits are max-pooled over the
    query heads of a KV head's group *before* the softmax. The softmax runs over the non-window
    keys only, in fp32 (no causal mask needed: every window query follows every candidate key).
    """
    R, Hq, W, D = c.queries.shape
    H = c.keys.shape[1]
    q = c.queries.float().view(R, H, Hq // H, W, D)  # query head g*... of kv head h: h*G + g
    logits = torch.einsum("rhgwd,rhnd->rhgwn", q, c.keys.float()) / D**0.5
    logits = logits.amax(2).masked_fill(~c.past[:, None, None], float("-inf"))  # [R, H, W, N]
    return torch.softmax(logits, dim=-1)
