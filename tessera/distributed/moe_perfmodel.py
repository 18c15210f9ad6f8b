"""Analytic time model of one expert-parallel MoE layer (dispatch, grouped GEMM0, activation, grouped
GEMM1, top-k combine) under three schedules: sequential (Megatron-LM's all-to-all dispatcher),
coarse-grained pipelining over token chunks (Tutel, arXiv 2206.03382; FasterMoE, PPoPP'22) and COMET's
fine-grained fused layers (arXiv 2502.19811; code in bytedance/flux, `moe_ag_scatter` = layer0,
`moe_gather_rs` = layer1).

Per rank, with EP = W ranks, E experts (E / W on each), top-k, hidden h, expert FFN f, `tokens` per
rank and routing skew `s` (the busiest rank receives s times the mean rows; s = 1 / balancedness):

- rows received by the busiest rank R = s tokens k, rows per local expert r = R W / E;
- grouped GEMMs (SwiGLU: GEMM0 [r, h] x [h, 2f], GEMM1 [r, f] x [f, h]) at the roofline
  max(flops / (peak eff(r) sms / SMS), weight bytes / HBM), with eff(r) = r / (r + r0), the
  efficiency ramp of a GEMM over few rows;
- dispatch: R (W - 1) / W rows of h over the link; combine: the same rows back, except that COMET
  reduces a token's top-k rows on the expert side first, so only one row per (token, rank) travels
  (`topk_rows_after_local_reduce`);
- sequential: permute + dispatch + GEMM0 + activation + GEMM1 + combine + un-permute, one after
  another, the all-to-alls through NCCL;
- pipelined: C token chunks; chunk i's dispatch, GEMMs and combine overlap chunk i - 1's
  (T = d + g + b + (C - 1) max(g, d + b): both all-to-alls load both directions of the links, so a
  chunk's dispatch and an earlier chunk's combine share them); every chunk's GEMMs run on C times
  fewer rows (lower eff) and on the SMs NCCL leaves; C chosen best of 2..16;
- COMET: two fused launches (layer0, layer1); in each `n_c` of the SMs' programs communicate, the rest
  compute (each launch its own `n_c`, chosen by profiling; `n_c` reported is layer1's, flux's
  `gather_rs_ctas`).
  Layer0 (split along M): the local rank's rows first, then one source rank after another as it
  arrives (each GEMM problem is an (expert, source) pair: r / W rows); its end is
  max_j (a_j + (W - j) g0) with a_j the arrival of the j-th source. Layer1 (split along N): GEMM1 in
  `n_b` column blocks, block j reduced and sent while block j + 1 computes:
  T1 = g1 + (n_b - 1) max(g1, c1) + c1. Comm programs move n_c x `sm_copy_gbps`, capped by the link.

Communication hidden = 1 - (T - T_compute) / T_comm, T_compute the schedule's own non-communication
work on all SMs and T_comm the sequential schedule's all-to-all time. The model knows no contention
for HBM between copies and GEMMs, no NVLink congestion and no kernel details: it bounds what the
schedules can buy with the stated inputs. Every input of `H800_NODE` is labelled in `H800_LABELS`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace


@dataclass(frozen=True)
class MoEShape:
    name: str
    hidden: int
    ffn: int  # per expert
    experts: int
    top_k: int
    elem_bytes: int = 2


@dataclass(frozen=True)
class Node:
    name: str
    ranks: int  # EP size
    sms: int
    peak_tflops: float  # dense bf16 GEMM throughput at large rows
    ramp_rows: float  # r0 of eff(r) = r / (r + r0)
    hbm_gbps: float  # achieved HBM bandwidth for weight / activation streaming
    link_gbps: float  # per-GPU all-to-all bandwidth an SM-driven kernel reaches
    nccl_gbps: float  # per-GPU all-to-all bandwidth of the baselines' NCCL all-to-all
    sm_copy_gbps: float  # bandwidth one communication program (SM) moves
    nccl_sms: int  # SMs NCCL's kernels hold while they overlap a GEMM
    alpha_us: float  # per peer message
    launch_us: float  # per kernel launch of a baseline
    block_us: float = 1.0  # per layer1 column block: its barrier and the tail of its GEMM wave


# Our H200's measured GEMM figures stand in for an H800's compute (the same GH100 die, 132 SMs, the
# same bf16 tensor peak); bandwidths are the H800's. Each entry says where its number comes from.
H800_LABELS = {
    "sms": "assumption: 132 SMs (H800 SXM, the die of our H200)",
    "peak_tflops": "measured: bf16 cuBLAS on our H200, fit through M=256 and M=1024 at N=14336, K=4096 "
                   "(benchmarks/results/ngemm_gpu_NVIDIA_H200_defaults.json: 686 and 786 TFLOP/s)",
    "ramp_rows": "measured: the same two points give r0 = 53 rows",
    "hbm_gbps": "measured x assumption: our H200 streams bf16 weights at 3.8 TB/s at M=1 (same file: 79% of its "
                "4.8 TB/s), the H800's 3.35 TB/s scaled alike",
    "link_gbps": "published (not ours): DeepEP README, H800 intranode EP8 dispatch/combine 153/158 GB/s",
    "nccl_gbps": "assumption: NCCL all-to-all at 120 GB/s per GPU (range 90-155 in the sweep)",
    "sm_copy_gbps": "assumption: 8 GB/s per communication SM (about 20 SMs saturate the link; DeepEP's order)",
    "nccl_sms": "assumption: NCCL holds 16 SMs while it overlaps a GEMM",
    "alpha_us": "assumption: 3 us per peer message",
    "launch_us": "assumption: 5 us per kernel launch (the dense overlap model's)",
    "block_us": "assumption: 1 us per layer1 column block",
}
H800_NODE = Node("8x H800 NVLink (H200-measured GEMMs)", ranks=8, sms=132, peak_tflops=827.0, ramp_rows=53.0,
                 hbm_gbps=3.8e3 * 3.35 / 4.8, link_gbps=155.0, nccl_gbps=120.0, sm_copy_gbps=8.0, nccl_sms=16,
                 alpha_us=3.0, launch_us=5.0)

# The three models of COMET's evaluation (expert dimensions as their configs give them; Qwen2-MoE's
# shared expert runs outside the expert-parallel layer and is left out)
MIXTRAL_8X7B = MoEShape("Mixtral-8x7B", 4096, 14336, 8, 2)
QWEN2_MOE = MoEShape("Qwen2-MoE-A2.7B", 2048, 1408, 64, 4)
PHI35_MOE = MoEShape("Phi-3.5-MoE", 4096, 6400, 16, 2)
MODELS = (MIXTRAL_8X7B, QWEN2_MOE, PHI35_MOE)


def fit_ramp(points: list[tuple[float, float]]) -> tuple[float, float]:
    """(peak TFLOP/s, r0) of tflops(r) = peak r / (r + r0) through two (rows, TFLOP/s) measurements."""
    (r1, t1), (r2, t2) = points
    # 1 / t = (1 + r0 / r) / peak is linear in 1 / r
    slope = (1 / t1 - 1 / t2) / (1 / r1 - 1 / r2)
    peak = 1 / (1 / t1 - slope / r1)
    return peak, slope * peak


def topk_rows_after_local_reduce(s: MoEShape, ranks: int) -> float:
    """Rows per token that leave the expert side when each rank first sums the token's rows of its own
    experts: the expected number of ranks among a token's k distinct experts, over k (uniform routing)."""
    g = s.experts // ranks
    miss = math.comb(s.experts - g, s.top_k) / math.comb(s.experts, s.top_k)
    return ranks * (1 - miss) / s.top_k


def _gemm_s(n: Node, s: MoEShape, rows_per_expert: float, n_experts: float, n_out: int, k: int, sms: float) -> float:
    eff = rows_per_expert / (rows_per_expert + n.ramp_rows)
    flops = 2.0 * rows_per_expert * n_experts * n_out * k
    t_flops = flops / (n.peak_tflops * 1e12 * eff * sms / n.sms)
    t_weights = n_experts * n_out * k * s.elem_bytes / (n.hbm_gbps * 1e9)
    return max(t_flops, t_weights)


@dataclass(frozen=True)
class Work:
    """The pieces of one layer on the busiest rank (seconds on all SMs, bytes on the wire)."""

    rows: float  # R
    rows_per_expert: float
    local_experts: int
    gemm0: float
    gemm1: float
    act: float
    permute: float  # gather before dispatch + scatter and top-k sum after combine (baselines only)
    dispatch_bytes: float
    combine_bytes: float  # rows as the baselines send them (one per (token, expert) pair)


def work(n: Node, s: MoEShape, tokens: int, skew: float = 1.0) -> Work:
    if tokens < 1 or skew < 1.0 or s.experts % n.ranks:
        raise ValueError(f"need tokens >= 1, skew >= 1 and experts divisible by ranks; got {tokens}, {skew}, "
                         f"{s.experts} experts on {n.ranks} ranks")
    E_loc = s.experts // n.ranks
    R = skew * tokens * s.top_k
    r = R / E_loc
    b = s.elem_bytes
    hbm = n.hbm_gbps * 1e9
    remote = R * (n.ranks - 1) / n.ranks * s.hidden * b
    return Work(R, r, E_loc, _gemm_s(n, s, r, E_loc, 2 * s.ffn, s.hidden, n.sms),
                _gemm_s(n, s, r, E_loc, s.hidden, s.ffn, n.sms),
                R * 3 * s.ffn * b / hbm,  # SwiGLU: read gate and up, write the product
                (2 * R * s.hidden * b + (R + tokens) * s.hidden * b) / hbm, remote, remote)


def _comm_s(n: Node, nbytes: float, gbps: float) -> float:
    return nbytes / (gbps * 1e9) + (n.ranks - 1) * n.alpha_us * 1e-6


def sequential(n: Node, s: MoEShape, tokens: int, skew: float = 1.0) -> dict:
    w = work(n, s, tokens, skew)
    comm = _comm_s(n, w.dispatch_bytes, n.nccl_gbps) + _comm_s(n, w.combine_bytes, n.nccl_gbps)
    compute = w.permute + w.gemm0 + w.act + w.gemm1 + 7 * n.launch_us * 1e-6
    return {"time": compute + comm, "compute": compute, "comm": comm}


def pipelined(n: Node, s: MoEShape, tokens: int, skew: float = 1.0, chunks: int | None = None) -> dict:
    """Tutel / FasterMoE: token chunks through dispatch -> GEMMs -> combine; best chunk count unless given."""
    w = work(n, s, tokens, skew)
    seq = sequential(n, s, tokens, skew)
    best = None
    for c in ([chunks] if chunks else (2, 4, 8, 16)):
        sms = n.sms - n.nccl_sms  # NCCL's kernels run beside the GEMMs
        r = w.rows_per_expert / c
        g = (_gemm_s(n, s, r, w.local_experts, 2 * s.ffn, s.hidden, sms) + _gemm_s(n, s, r, w.local_experts, s.hidden,
             s.ffn, sms) + w.act / c * n.sms / sms + 3 * n.launch_us * 1e-6)
        d = _comm_s(n, w.dispatch_bytes / c, n.nccl_gbps)
        b = _comm_s(n, w.combine_bytes / c, n.nccl_gbps)
        # an all-to-all loads both directions of every link: chunk i's dispatch and chunk i - 2's
        # combine share it, so the link stage of a chunk is d + b
        t = w.permute + d + g + b + (c - 1) * max(g, d + b) + 2 * n.launch_us * 1e-6
        if best is None or t < best["time"]:
            best = {"time": t, "chunks": c}
    compute = w.permute + w.gemm0 + w.act + w.gemm1
    return best | {"compute": compute, "comm": seq["comm"]}


def layer0_end(g: float, arrivals: list[float]) -> float:
    """Blocks computed in order, block j (time g) not before its data arrives at arrivals[j]:
    the end of the last block, max_j (a_j + (W - j) g) when arrivals are non-decreasing."""
    W = len(arrivals)
    return max(a + (W - j) * g for j, a in enumerate(arrivals))


def flow_shop2(g: float, c: float, blocks: int) -> float:
    """Two stages (compute g, then communicate c) over `blocks` equal blocks in order."""
    return g + (blocks - 1) * max(g, c) + c


def comet_layer0(n: Node, s: MoEShape, w: Work, nc: int) -> float:
    """Dispatch fused with GEMM0 (split along M), n_c SMs communicating."""
    W, sms = n.ranks, n.sms - nc
    bw = min(n.link_gbps, nc * n.sm_copy_gbps)
    # GEMM problems are (expert, source) pairs of r / W rows; sources arrive one after another
    g0 = _gemm_s(n, s, w.rows_per_expert / W, w.local_experts * W, 2 * s.ffn, s.hidden, sms) / W
    per_src = _comm_s(n, w.dispatch_bytes, bw) / (W - 1)
    return layer0_end(g0, [0.0] + [j * per_src for j in range(1, W)]) + n.launch_us * 1e-6


def comet_layer1(n: Node, s: MoEShape, w: Work, nc: int, nb: int) -> float:
    """GEMM1 in nb column blocks (split along N) fused with top-k reduce and combine, n_c SMs communicating."""
    sms = n.sms - nc
    bw = min(n.link_gbps, nc * n.sm_copy_gbps)
    comb = _comm_s(n, w.combine_bytes * topk_rows_after_local_reduce(s, n.ranks), bw)
    g1 = _gemm_s(n, s, w.rows_per_expert, w.local_experts, s.hidden // nb, s.ffn, sms) + n.block_us * 1e-6
    return flow_shop2(g1, comb / nb, nb) + n.launch_us * 1e-6


def comet(n: Node, s: MoEShape, tokens: int, skew: float = 1.0, n_c: int | None = None,
          n_blocks: int | None = None) -> dict:
    """COMET's two fused layers with n_c communication SMs and n_blocks layer1 column blocks; each
    launch gets the best of its own when not given, as COMET's offline profiling picks them."""
    w = work(n, s, tokens, skew)
    for nc in [n_c] if n_c else []:
        if not 0 < nc < n.sms:
            raise ValueError(f"n_c must be in [1, {n.sms - 1}], got {nc}")
    ncs = [n_c] if n_c else range(1, n.sms // 2 + 1)
    max_blocks = max(1, s.hidden // 1024)  # flux's gather-RS splits N in multiples of 1024 columns
    nbs = [n_blocks] if n_blocks else [b for b in (1, 2, 4, 8) if b <= max_blocks]
    t0, nc0 = min((comet_layer0(n, s, w, nc), nc) for nc in ncs)
    t1, nc1, nb = min((comet_layer1(n, s, w, nc, nb), nc, nb) for nc in ncs for nb in nbs)
    act = w.act * n.sms / (n.sms - nc0)  # the activation runs inside layer0's compute programs
    seq = sequential(n, s, tokens, skew)
    return {"time": t0 + act + t1, "n_c": nc1, "n_c_layer0": nc0, "n_blocks": nb,
            "compute": w.gemm0 + w.act + w.gemm1, "comm": seq["comm"]}


def hidden_share(t: dict) -> float:
    """Share of the sequential communication time the schedule hides (0..1)."""
    return min(1.0, max(0.0, 1.0 - (t["time"] - t["compute"]) / t["comm"]))


def compare(n: Node, s: MoEShape, tokens: int, skew: float = 1.0) -> dict:
    seq, pipe, cm = sequential(n, s, tokens, skew), pipelined(n, s, tokens, skew), comet(n, s, tokens, skew)
    return {"model": s.name, "tokens": tokens, "skew": skew,
            "sequential_ms": seq["time"] * 1e3, "pipelined_ms": pipe["time"] * 1e3, "comet_ms": cm["time"] * 1e3,
            "chunks": pipe["chunks"], "n_c": cm["n_c"], "n_blocks": cm["n_blocks"],
            "comm_over_compute": seq["comm"] / seq["compute"],
            "speedup_vs_sequential": seq["time"] / cm["time"], "speedup_vs_pipelined": pipe["time"] / cm["time"],
            "hidden_comet": hidden_share(cm), "hidden_pipelined": hidden_share(pipe)}


def variants(n: Node = H800_NODE) -> dict[str, Node]:
    """The low and high ends of the uncertain inputs, for the ranges the comparison reports."""
    return {"assumed": n,
            "slow NCCL (90 GB/s)": replace(n, nccl_gbps=90.0),
            "NCCL at the link (155 GB/s)": replace(n, nccl_gbps=155.0),
            "6 GB/s per comm SM": replace(n, sm_copy_gbps=6.0),
            "12 GB/s per comm SM": replace(n, sm_copy_gbps=12.0),
            "NCCL holds 24 SMs": replace(n, nccl_sms=24),
            "steeper GEMM ramp (r0 = 128)": replace(n, ramp_rows=128.0)}


# COMET's own figures (arXiv 2502.19811; theirs, not reproduced here)
PAPER = {"per_layer_speedup_mean": 1.96, "per_layer_speedup_range": (1.28, 2.37), "hidden_comm": 0.865,
         "hidden_comm_tutel": 0.686, "hidden_comm_fastermoe": 0.292, "best_n_c": {4096: 18, 16384: 26}}


def nccl_for_comm_share(n: Node, s: MoEShape, tokens: int, share: float) -> float:
    """The NCCL all-to-all bandwidth (GB/s) at which communication is `share` of the sequential layer
    (COMET reports 47% of model time without it): by bisection, the share falls as bandwidth grows."""
    if not 0 < share < 1:
        raise ValueError(f"share must be in (0, 1), got {share}")
    lo, hi = 1e-3, 1e5
    for _ in range(100):
        mid = math.sqrt(lo * hi)
        t = sequential(replace(n, nccl_gbps=mid), s, tokens)
        lo, hi = (mid, hi) if t["comm"] / t["time"] > share else (lo, mid)
    return math.sqrt(lo * hi)
