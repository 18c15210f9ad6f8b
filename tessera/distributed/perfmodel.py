"""Analytic time model for AllGather-GEMM and GEMM-ReduceScatter: sequential, decomposed
(chunked collectives overlapped at stream level) and tile-fused (TileLink / Triton-distributed).

Alpha-beta communication (latency + bytes / bandwidth, ring algorithms) and a throughput GEMM:
- sequential: T_comm + T_gemm
- decomposed: W steps; the local block first, then each block's GEMM after its transfer. Each
  step's GEMM is W times smaller and runs at `split_efficiency`, and each step pays a launch:
  T = t_g + (W-1) * max(t_g, t_c) + W * launch  (+ the last transfer for GEMM-RS)
- fused: one kernel; compute and transfers overlap at tile granularity, the transfers steal
  `sm_steal` of the SMs when they are SM-driven; what stays exposed is one tile's latency and
  the per-tile waits:
  T = max(T_gemm / (1 - sm_steal), T_comm) + t_tile + tiles_per_sm * wait_ns
Speedups are relative to sequential (the papers' "non-overlapping baseline"). The model knows
nothing of contention or of MoE routing, so it is an upper bound on what overlap can buy and it
cannot reproduce TileLink's MoE figures (up to 20.76x, which come from replacing vLLM's MoE path).
The expert-parallel MoE layer (all-to-all, routing skew, COMET's fused layers) has its own model in
`moe_perfmodel.py`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Cluster:
    name: str
    ranks: int
    gemm_tflops: float  # achieved dense GEMM throughput per GPU (TFLOP/s)
    link_gbps: float  # per-GPU unidirectional bandwidth used by the collective (GB/s)
    link_latency_us: float  # per ring step
    sms: int = 132
    launch_us: float = 5.0  # kernel launch + stream sync per decomposed step
    split_efficiency: float = 0.9  # GEMM efficiency of a W-times smaller GEMM
    sm_steal: float = 0.1  # share of SMs the fused kernel gives to SM-driven copies
    wait_ns: float = 200.0  # per-tile signal wait when data is already there


@dataclass(frozen=True)
class Shape:
    m: int  # global tokens (rows of the gathered A / of the reduce-scattered C)
    n: int  # output columns on this rank
    k: int  # reduction length on this rank
    elem_bytes: int = 2
    tile_m: int = 128
    tile_n: int = 128


def _gemm_s(c: Cluster, m, n, k) -> float:
    return 2.0 * m * n * k / (c.gemm_tflops * 1e12)


def _ring_s(c: Cluster, block_bytes: float) -> float:
    """Ring all-gather / reduce-scatter of W blocks: W-1 steps of one block each."""
    return (c.ranks - 1) * (c.link_latency_us * 1e-6 + block_bytes / (c.link_gbps * 1e9))


def _fused(c: Cluster, s: Shape, t_gemm, t_comm) -> float:
    tiles = -(-s.m // s.tile_m) * -(-s.n // s.tile_n)
    t_tile = _gemm_s(c, s.tile_m, s.tile_n, s.k)
    return max(t_gemm / (1 - c.sm_steal), t_comm) + t_tile + -(-tiles // c.sms) * c.wait_ns * 1e-9


def _overlap_times(c: Cluster, s: Shape, comm_bytes: int, comm_last: bool) -> dict:
    """Sequential / decomposed / fused times of a GEMM split in W chunks overlapped with a ring
    collective of `comm_bytes` per rank. `comm_last`: the collective's last chunk follows the last
    GEMM chunk (GEMM-RS); otherwise the first GEMM chunk runs on local data first (AG-GEMM)."""
    W = c.ranks
    t_gemm = _gemm_s(c, s.m, s.n, s.k)
    t_comm = _ring_s(c, comm_bytes)
    t_g, t_c = t_gemm / W / c.split_efficiency, t_comm / (W - 1)
    return {"sequential": t_comm + t_gemm,
            "decomposed": t_g + (W - 1) * max(t_g, t_c) + (t_c if comm_last else 0.0) + W * c.launch_us * 1e-6,
            "fused": _fused(c, s, t_gemm, t_comm), "t_gemm": t_gemm, "t_comm": t_comm}


def ag_gemm(c: Cluster, s: Shape) -> dict:
    """A [M/W, K] per rank gathered, times B [K, N]."""
    return _overlap_times(c, s, s.m // c.ranks * s.k * s.elem_bytes, comm_last=False)


def gemm_rs(c: Cluster, s: Shape) -> dict:
    """A [M, K/W] @ B [K/W, N] per rank, reduce-scattered over M (fp32-free: output dtype moves)."""
    return _overlap_times(c, s, s.m // c.ranks * s.n * s.elem_bytes, comm_last=True)


def speedups(times: dict) -> dict:
    return {k: times["sequential"] / times[k] for k in ("decomposed", "fused")}


# Illustrative clusters. Throughputs are round numbers of the order the vendors publish, derated;
# they are assumptions of this model, not measurements of ours.
H800x8 = Cluster("8x H800 NVLink (assumed 600 TFLOP/s, 160 GB/s)", 8, 600.0, 160.0, 3.0)
H100x8 = Cluster("8x H100 NVLink (assumed 650 TFLOP/s, 360 GB/s)", 8, 650.0, 360.0, 3.0)
L20x8 = Cluster("8x L20 PCIe (assumed 110 TFLOP/s, 20 GB/s)", 8, 110.0, 20.0, 10.0, sms=92)

# Speedups over the non-overlapped baseline as the papers report them (theirs, not ours).
PAPER_CLAIMS = [
    ("TileLink (arXiv 2503.20313), abstract", "all workloads, 8-16x H800", "1.17x - 20.76x (20.76x: MoE)"),
    ("TileLink, secondary summary (unverified)", "AG+GEMM, 8x H800", "1.27x (FLUX 1.34x)"),
    ("TileLink, secondary summary (unverified)", "GEMM+RS, 8x H800", "1.25x (FLUX 1.28x)"),
    ("Triton-distributed docs/e2e_dense.md", "Qwen3-32B MLP AG+GEMM+RS, 8x H800, M=2048", "1.216x"),
    ("Triton-distributed docs/e2e_dense.md", "8x MI308X AG-GEMM / GEMM-RS", "1.0025x / 1.26x"),
    ("FLUX docs/performance.md", "AG+GEMM, 8x L20 TP=8", "16.95 ms -> 5.90 ms (2.87x)"),
]


def comparison_rows(shape: Shape = Shape(m=8192, n=29568 // 8, k=8192)) -> list[dict]:
    """Model predictions for a Llama-70B-like MLP shard (M tokens, N = FFN/8, K = hidden)."""
    rows = []
    for c in (H800x8, H100x8, L20x8):
        for op, fn, sh in (("ag_gemm", ag_gemm, shape),
                           ("gemm_rs", gemm_rs, Shape(m=shape.m, n=shape.k, k=shape.n))):
            t = fn(c, sh)
            rows.append({"cluster": c.name, "op": op, "shape": (sh.m, sh.n, sh.k),
                         "comm_over_gemm": t["t_comm"] / t["t_gemm"], **speedups(t)})
    return rows
