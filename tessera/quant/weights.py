"""Round-to-nearest symmetric weight quantization: int8 per output channel, int4 per group.

No calibration: GPTQ, AWQ or SmoothQuant (Xiao et al., arXiv 2211.10438) would improve int4 and
outlier-heavy activations (docs/ngemm.md). Scales use absmax, so the largest weight of a channel/group maps to 127 (int8) or 7
(int4, before the clip search below).
"""

from __future__ import annotations

import torch


def quantize_weight_int8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """w [N, K] float -> (q [N, K] int8 in [-127, 127], scale [N] fp32) with w ~= q * scale[:, None]."""
    w = w.detach().float()
    scale = w.abs().amax(dim=1).clamp_min(1e-12) / 127.0  # [N]
    q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return q.contiguous(), scale


#: Clipping ratios tried per int4 group: with 15 levels, clipping the group's absmax a little
#: trades a rare large error for a finer step everywhere (the weight-only half of the clip search in
#: AWQ, Lin et al., arXiv 2306.00978).
INT4_CLIP_RATIOS = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75)


def quantize_weight_int4(w: torch.Tensor, group: int) -> tuple[torch.Tensor, torch.Tensor]:
    """w [N, K] float -> (q [N, K] int8 holding int4 in [-8, 7], scale [N, K/group] fp32).

    Per group, the scale is absmax * r / 7 for the ratio r in INT4_CLIP_RATIOS of least squared error.
    """
    N, K = w.shape
    if group <= 0 or K % group:
        raise ValueError(f"K={K} must be a positive multiple of the group size {group}")
    wg = w.detach().float().view(N, K // group, group)  # [N, G, group]
    amax = wg.abs().amax(dim=-1).clamp_min(1e-12)  # [N, G]
    best_err, best_scale = None, None
    for r in INT4_CLIP_RATIOS:
        scale = amax * r / 7.0  # [N, G]
        err = (torch.round(wg / scale[..., None]).clamp(-8, 7) * scale[..., None] - wg).pow(2).sum(-1)
        if best_err is None:
            best_err, best_scale = err, scale
        else:
            better = err < best_err
            best_err, best_scale = torch.where(better, err, best_err), torch.where(better, scale, best_scale)
    q = torch.round(wg / best_scale[..., None]).clamp(-8, 7).to(torch.int8).view(N, K)
    return q.contiguous(), best_scale
