"""Plain-PyTorch references for COMET's fused layers (`comet_layer0.py`, `comet_layer1.py`), in one process
with every rank's inputs: what rank r's layer0 computes (its act rows in compute order) and what the two
layers give at home (the routed MoE output). fp32 accumulation, one rounding, like the kernels."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tessera.kernels.moe.comet_context import compute_order


def swiglu_ref(x: torch.Tensor, w_gate_up: torch.Tensor) -> torch.Tensor:
    """x [R, H], w_gate_up [2I, H] (gate rows first) -> silu(x Wg^T) * (x Wu^T) [R, I], rounded once."""
    g, u = (x.float() @ w_gate_up.float().T).chunk(2, dim=-1)
    return (F.silu(g) * u).to(x.dtype)


def layer0_ref(xs: list, ids: list, w_gate_up: torch.Tensor, rank: int) -> torch.Tensor:
    """Rank `rank`'s act rows [R, I]: for each source s in compute order (rank, rank+1, ...), for each local
    expert, the (token, slot) pairs of s routed there in (token, slot) order. xs[s] [T_s, H], ids[s] [T_s, k]
    (global ids), w_gate_up [E, 2I, H] (all experts)."""
    W, E = len(xs), w_gate_up.shape[0]
    EL = E // W
    out = []
    for s in compute_order(rank, W):
        for e in range(rank * EL, (rank + 1) * EL):
            t = (ids[s] == e).nonzero()[:, 0]  # row-major: (token, slot) order
            if len(t):
                out.append(swiglu_ref(xs[s][t], w_gate_up[e]))
    return torch.cat(out) if out else xs[0].new_zeros(0, w_gate_up.shape[1] // 2)


def moe_ref(x: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor, w_gate_up: torch.Tensor,
            w_down: torch.Tensor) -> torch.Tensor:
    """out[t] = sum_j weights[t, j] down[e] @ swiglu(gate_up[e] @ x[t]), e = ids[t, j] (-1: nothing);
    x [T, H], w_gate_up [E, 2I, H], w_down [E, H, I]; per-expert outputs rounded to x.dtype, sum in fp32."""
    out = torch.zeros(x.shape[0], w_down.shape[1], dtype=torch.float32, device=x.device)
    for e in ids[ids >= 0].unique().tolist():
        t, j = (ids == e).nonzero(as_tuple=True)
        y = (swiglu_ref(x[t], w_gate_up[e]).float() @ w_down[e].float().T).to(x.dtype)
        out.index_add_(0, t, weights[t, j, None].float() * y.float())
    return out.to(x.dtype)
