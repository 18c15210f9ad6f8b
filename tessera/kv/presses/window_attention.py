"""The attention of a scorer's window queries over its candidate keys (R-KV importance, SnapKV, H2O)."""

from __future__ import annotations

import torch

from tessera.kv.presses.scorer import Candidates


def window_attention(c: Candidates, dtype=torch.float32) -> torch.Tensor:
    """Attention of the W window queries over the candidate (non-window) keys: [R, Hkv, W, N] fp32.

    GQA as in R-KV's `compute_attention_scores(pooling="max")`: raw logits are max-pooled over the
    query heads of a KV head's group *before* the softmax. The softmax runs over the non-window
    keys only, in fp32 (no causal mask needed: every window query follows every candidate key).
    `dtype`: what the logits are computed in (bf16: as the authors' code in a bf16 model; the softmax
    stays fp32 there too).
    """
    R, Hq, W, D = c.queries.shape
    H = c.keys.shape[1]
    q = c.queries.to(dtype).view(R, H, Hq // H, W, D)  # query head g*... of kv head h: h*G + g
    logits = torch.einsum("rhgwd,rhnd->rhgwn", q, c.keys.to(dtype)) / D**0.5
    logits = logits.amax(2).float().masked_fill(~c.past[:, None, None], float("-inf"))  # [R, H, W, N]
    return torch.softmax(logits, dim=-1)
