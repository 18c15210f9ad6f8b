"""How routed experts run: four interchangeable backends over the same fused weights.

    out[t] = sum_j  w[t, j] * down[e] @ (silu(gate[e] @ x[t]) * (up[e] @ x[t])),   e = ids[t, j]

- `loop`: one token and one slot at a time; the plain reference the others are tested against.
- `sorted`: the (token, slot) pairs sorted by expert, then one gate/up GEMM and one down GEMM per
  non-empty expert over its contiguous rows (MegaBlocks' "permute, group, un-permute", arXiv 2211.15841,
  without the block-sparse kernels). The CPU default above `GROUPED_MM_MAX_TOKENS` tokens (prefill).
- `grouped_mm`: the same permutation, then `torch._grouped_mm` over all experts in one call. The CPU default
  up to `GROUPED_MM_MAX_TOKENS` tokens (decode).
- `triton`: the same permutation, then the grouped GEMM of `tessera.kernels.moe.grouped_gemm`.
- `gathered`: no permutation: every (token, slot) pair reads its own expert's weights, as a gather and a
  reduction with static shapes. Eagerly it materialises the gathered weights ([T, k, 2I, H], slow); inside a
  compiled graph Inductor fuses gather, multiply and sum into one loop nest that reads the weights in place.
  The compiled decode step's choice for few pairs (`GATHERED_MAX_PAIRS`).
- `capacity`: for training only. Every expert gets a fixed number of slots, C = capacity_factor * T * k / E
  (GShard, arXiv 2006.16668; Switch Transformer, arXiv 2101.03961), one batched matmul over [E, C, H], and
  the pairs past an expert's C are dropped. Every shape is static, so `torch.compile` takes it whole; at
  inference nothing may be dropped, so the model uses one of the exact backends.

A slot whose expert id is negative (dropped by capacity or by expert parallelism) contributes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from tessera.kernels.moe.ep_layout import plan_sends

BACKENDS = ("auto", "loop", "sorted", "grouped_mm", "triton", "gathered", "capacity")
CAPACITY_FACTOR = 2.0


@dataclass
class Permutation:
    """Rows of `x` in expert order: row r of the grouped input is token `token[r]`, routed to an expert
    with weight `weight[r]`; expert e owns rows offsets[e]:offsets[e + 1]."""

    token: torch.Tensor  # [R] long
    weight: torch.Tensor  # [R]
    offsets: torch.Tensor  # [E + 1] long (CPU)


def permute(ids: torch.Tensor, weights: torch.Tensor, num_experts: int) -> Permutation:
    """ids, weights [T, k] -> the (token, slot) pairs grouped by expert, dropped slots (id < 0) left out:
    expert parallelism's send plan for a single rank."""
    plan = plan_sends(ids, num_experts, world=1)
    offsets = torch.zeros(num_experts + 1, dtype=torch.long)
    offsets[1:] = torch.cumsum(plan.matrix[0], 0)
    return Permutation(plan.token, weights.flatten()[plan.order], offsets)


def swiglu_rows(h: torch.Tensor) -> torch.Tensor:  # [R, 2I] (gate | up) -> [R, I]
    gate, up = h.chunk(2, dim=-1)
    return F.silu(gate) * up


def experts_loop(x, ids, weights, gate_up, down):
    """Reference: x [T, H], ids / weights [T, k], gate_up [E, 2I, H], down [E, H, I] -> [T, H]."""
    out = torch.zeros_like(x)
    for t in range(x.shape[0]):
        for j in range(ids.shape[1]):
            e = int(ids[t, j])
            if e >= 0:
                h = swiglu_rows(x[t : t + 1] @ gate_up[e].T)
                out[t] += weights[t, j] * (h @ down[e].T)[0]
    return out


def per_expert(rows: torch.Tensor, offsets: torch.Tensor, expert_fn) -> torch.Tensor:
    """rows [R, H] grouped by expert (expert e owns rows offsets[e]:offsets[e + 1], offsets a CPU tensor)
    -> expert_fn(e, its rows) for every non-empty expert, written back in place of its rows [R, H]."""
    y = torch.empty_like(rows)
    bounds = offsets.tolist()
    for e in range(len(bounds) - 1):
        s, t = bounds[e], bounds[e + 1]
        if t > s:
            y[s:t] = expert_fn(e, rows[s:t])
    return y


def grouped_swiglu(rows: torch.Tensor, offsets: torch.Tensor, gate_up, down) -> torch.Tensor:
    """Each row through its expert, unweighted [R, H]: one gate/up and one down GEMM per non-empty expert."""
    return per_expert(rows, offsets, lambda e, r: swiglu_rows(r @ gate_up[e].T) @ down[e].T)


def experts_sorted(x, ids, weights, gate_up, down):
    p = permute(ids, weights, gate_up.shape[0])
    return combine(x, p, grouped_swiglu(x[p.token], p.offsets, gate_up, down))


def experts_grouped_mm(x, ids, weights, gate_up, down):
    p = permute(ids, weights, gate_up.shape[0])
    offs = p.offsets[1:].to(device=x.device, dtype=torch.int32)  # cumulative row ends per expert
    h = torch._grouped_mm(x[p.token], gate_up.transpose(1, 2), offs=offs)  # [R, 2I]
    y = torch._grouped_mm(swiglu_rows(h), down.transpose(1, 2), offs=offs)  # [R, H]
    return combine(x, p, y)


def experts_triton(x, ids, weights, gate_up, down):
    from tessera.kernels.moe.grouped_gemm import grouped_gemm

    p = permute(ids, weights, gate_up.shape[0])
    offsets = p.offsets.to(x.device)
    h = grouped_gemm(x[p.token], gate_up, offsets)  # [R, 2I]
    return combine(x, p, grouped_gemm(swiglu_rows(h), down, offsets))


def experts_gathered(x, ids, weights, gate_up, down):
    """x [T, H], ids / weights [T, k] -> [T, H] with one gathered GEMV per (token, slot) pair. Written as
    multiply-and-sum, not matmul, so that Inductor fuses the gather into the reduction instead of copying
    each pair's weights out first (a matmul is an external kernel and would need them materialised)."""
    keep = ids >= 0  # dropped slots read expert 0 and are weighted 0
    e = ids.clamp(min=0)
    h = (gate_up[e] * x[:, None, None, :]).sum(-1)  # [T, k, 2I]
    y = (down[e] * swiglu_rows(h)[:, :, None, :]).sum(-1)  # [T, k, H]
    return (y * (weights * keep).to(y.dtype)[..., None]).sum(1)


def experts_capacity(x, ids, weights, gate_up, down, capacity_factor: float = CAPACITY_FACTOR):
    T, k = ids.shape
    E, H = gate_up.shape[0], x.shape[1]
    C = max(1, int(capacity_factor * T * k / E))
    flat = ids.flatten()  # [T k]
    order = torch.argsort(flat, stable=True)
    expert = flat[order]
    counts = F.one_hot(flat, E).sum(0)  # [E] (one_hot, not bincount: a static shape)
    pos = torch.arange(T * k, device=x.device) - (torch.cumsum(counts, 0) - counts)[expert]  # slot in its expert
    keep = pos < C
    dst = torch.where(keep, expert * C + pos, E * C)  # dropped pairs all land on one spare row
    token = order // k
    buf = x.new_zeros(E * C + 1, H).index_copy(0, dst, x[token])[: E * C].view(E, C, H)
    h = swiglu_rows(torch.bmm(buf, gate_up.transpose(1, 2)))  # [E, C, I]
    y = torch.bmm(h, down.transpose(1, 2)).reshape(E * C, H)[dst.clamp(max=E * C - 1)]  # [T k, H]
    w = (weights.flatten()[order] * keep).to(y.dtype)  # 0 for the dropped pairs
    return x.new_zeros(T, H).index_add(0, token, (y * w[:, None]).to(x.dtype))  # bf16 rows under autocast


def combine(x, p: Permutation, y):  # y [R, H] in expert order -> [T, H], weighted and summed per token
    out = torch.zeros_like(x)
    return out.index_add_(0, p.token, y * p.weight[:, None].to(y.dtype))


_IMPL = {"loop": experts_loop, "sorted": experts_sorted, "grouped_mm": experts_grouped_mm,
         "triton": experts_triton, "gathered": experts_gathered, "capacity": experts_capacity}


#: CPU, `auto`: torch._grouped_mm up to this many tokens (decode), the sorted loop above it (prefill). Measured
#: on a 2-vCPU Zen 4 EPYC, embedded MoE shapes (benchmarks/results/moe_experts_cpu.md): grouped_mm 1.12-1.33x
#: the sorted loop at 8-256 tokens, 0.90x at 2,048.
GROUPED_MM_MAX_TOKENS = 256

#: In a compiled graph, `auto` takes the `gathered` form for few (token, slot) pairs and the opaque
#: `routed_experts` op otherwise (`use_gathered`). A pair re-reads its expert's weights, so gathered's cost
#: grows with the pairs and the grouped GEMMs' with the experts hit; at few pairs the grouped path's small-GEMM
#: and permutation overheads dominate. Measured on a 2-vCPU Zen 4 EPYC (benchmarks/results/moe_experts_cpu.md,
#: one layer): embedded shapes (6 MB of experts, L3-resident) gathered 1.25-1.86x `grouped_mm` up to 128 pairs,
#: 0.93x at 256; a Mixtral-8x7B layer scaled down 4x (350 MB, DRAM) 1.2-1.9x up to 32 pairs, 0.68x at 64.
GATHERED_MAX_PAIRS = 64
GATHERED_PAIRS_PER_EXPERT = 4  # always gathered up to 4 pairs an expert, wherever the weights live
GATHERED_CACHE_BYTES = 32 << 20  # up to GATHERED_MAX_PAIRS while a layer's experts fit a server L3


def use_gathered(pairs, gate_up: torch.Tensor, down: torch.Tensor) -> bool:
    """The compiled graph's `auto` rule for `pairs` (token, slot) pairs (may be a symbolic size)."""
    E = gate_up.shape[0]
    nbytes = (gate_up.numel() + down.numel()) * gate_up.element_size()
    return pairs <= GATHERED_PAIRS_PER_EXPERT * E or (pairs <= GATHERED_MAX_PAIRS and nbytes <= GATHERED_CACHE_BYTES)


def run(backend: str, x, ids, weights, gate_up, down, capacity_factor: float = CAPACITY_FACTOR) -> torch.Tensor:
    if backend == "auto":
        if x.is_cuda:
            backend = "triton"
        else:
            small = x.shape[0] <= GROUPED_MM_MAX_TOKENS and hasattr(torch, "_grouped_mm")
            backend = "grouped_mm" if small else "sorted"
    if backend not in _IMPL:
        raise ValueError(f"unknown experts backend {backend!r}; known: {', '.join(BACKENDS)}")
    if backend == "capacity":
        return experts_capacity(x, ids, weights, gate_up, down, capacity_factor)
    return _IMPL[backend](x, ids, weights, gate_up, down)


@torch.library.custom_op("tessera::routed_experts", mutates_args=())
def routed_experts(x: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor, gate_up: torch.Tensor,
                   down: torch.Tensor, backend: str) -> torch.Tensor:
    """`run` as one opaque op, for a compiled graph (`tessera.engine.compiled_decode`): the exact backends'
    row counts per expert are data-dependent, which a graph cannot hold, so the graph calls this instead.
    Few pairs take the static `experts_gathered` form instead (`use_gathered`). (Building the
    permutation in the graph, static shapes, and only the grouped GEMMs opaque, made the embedded MoE
    reasoner's step 1.4x slower: Inductor's sort and scatter-add kernels cost more than the eager ops on these
    few rows.)"""
    return run(backend, x, ids, weights, gate_up, down)


@routed_experts.register_fake
def _(x, ids, weights, gate_up, down, backend):
    return torch.empty_like(x)
