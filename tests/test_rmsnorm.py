"""RMSNorm's fused fp32 path (torch's `F.rms_norm`) gives bitwise what the explicit HF formula gives."""

import pytest
import torch

from tessera.layers.norm import RMSNorm


def explicit(norm: RMSNorm, x: torch.Tensor) -> torch.Tensor:
    x32 = x.float()
    return norm.weight * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + norm.eps)).to(x.dtype)


@pytest.mark.parametrize("shape,transpose", [((8, 1, 256), False), ((3, 37, 256), False), ((2, 4, 5, 64), True),
                                             ((1, 1, 48), False), ((2, 130, 1, 64), True)])
def test_fused_fp32_path_is_bitwise_the_formula(shape, transpose):
    g = torch.Generator().manual_seed(0)
    norm = RMSNorm(shape[-1], eps=1e-6)
    norm.weight.data = torch.randn(shape[-1], generator=g)
    x = torch.randn(*shape, generator=g) * 3
    if transpose:  # the per-head q/k norm sees [B, H, S, D] views of [B, S, H, D] projections
        x = x.transpose(1, 2)
    assert torch.equal(norm(x), explicit(norm, x))


def test_bf16_keeps_the_explicit_formula():
    norm = RMSNorm(64).to(torch.bfloat16)
    x = torch.randn(2, 3, 64).to(torch.bfloat16)
    assert norm(x).dtype == torch.bfloat16
    assert torch.equal(norm(x), explicit(norm, x))
