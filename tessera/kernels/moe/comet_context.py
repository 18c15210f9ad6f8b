"""COMET's fused MoE layers, host side shared by both: the context that owns the symmetric-heap buffers, the
per-call exchange of routing counts, the choice of (n_c, n_blocks), and the layout layer0 hands to layer1.

    ctx = create_comet_context(heap, max_tokens, top_k, hidden, ffn, num_experts, dtype)   # collective, once
    act, layout = comet_layer0(x, topk_ids, topk_weights, w_gate_up, ctx)                  # comet_layer0.py
    out = comet_layer1(act, w_down, layout, ctx)                                           # comet_layer1.py

Buffers are sized once for the worst case (every (token, slot) pair of every source on one rank: max_tokens
x top-k rows per source), like `ep_a2a.create_ep_a2a_context`; `comet_heap_bytes` says how many bytes.

Per call, each rank writes its count matrix [W, E_local] (rows for each destination and local expert), its
token count and the configuration it asks for into `meta` (double-buffered by epoch parity), then passes one
host barrier that also agrees on input errors. After it, every rank reads every rank's `meta` straight from
the peers' heaps: the whole [W, W, E_local] count matrix is known everywhere with no collective beyond the
barrier, so every rank builds its tile tables on the host and picks the same configuration. Parity double
buffering is enough: a rank can only overwrite slot p again after the next call's barrier, which its peers
reach only after reading slot p.

Virtual ranks (W heaps in one process, the rank on grid axis 1; `VirtualHeap`) run the same host code once
per rank and one launch; the kernels localize every pointer, so the weights live on the heap too.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import triton

from tessera.distributed import parallel_state as ps
from tessera.distributed import waits
from tessera.distributed.symm import ALIGN
from tessera.kernels.moe import comet_tune
from tessera.kernels.moe.comet_tune import CometConfig, TuneKey
from tessera.kernels.moe.ep_layout import experts_per_rank

BG = 16  # token groups per layer1 communication step
BT = 16  # home tokens per layer1 summing program
BLOCK_R = 16  # rows per push
P_N_C, P_N_RT, P_N_BLOCKS, P_TPB, P_N_GT, P_T, P_HOME = range(7)  # slots of `params`


def _buffers(W, max_tokens, top_k, hidden, ffn, num_experts, dtype, tiles, nc_max, trace_cap, virtual):
    """(name, shape, dtype) of every heap buffer: one list for sizing and allocation."""
    S, EL, (BM, BN, _) = max_tokens * top_k, num_experts // W, tiles
    H, FF, i64, f32 = hidden, ffn, torch.int64, torch.float32
    RT = triton.cdiv(W * S, BM) + W * EL  # row tiles: BM rows of one (source, expert) group each
    NCT1 = triton.cdiv(H, BN)
    NB = min(16, NCT1)
    GT = triton.cdiv(W * S, BG) + W  # groups of one destination per communication step
    P1 = RT * NCT1 + NB * nc_max + NB * triton.cdiv(max_tokens, BT)
    bufs = [
        ("send", (S, H), dtype), ("send_w", (S,), f32), ("send_tok", (S,), i64),  # my rows, destination-major
        ("send_off", (W + 1,), i64),  # first send row per destination
        ("meta", (2, W * EL + 4), i64),  # per parity: counts [W, EL], T, requested n_c, n_blocks, 1
        ("recv", (W * S, H), dtype), ("recv_w", (W * S,), f32), ("recv_tok", (W * S,), i64),  # by source
        ("act", (W * S, FF), dtype),  # layer0 output, rows in compute order (local source first)
        ("y", (W * S, H), dtype),  # layer1 GEMM output, same rows
        ("comb", (W, max_tokens, H), f32),  # home: each expert rank's weighted partial per token
        ("out", (max_tokens, H), dtype), ("home_mask", (max_tokens, W), i64),  # token t has rows on rank r
        ("rtab", (RT, 5), i64),  # row tiles: source, expert, first act row, group's end act row, first recv row
        ("prog", (P1, 3), i64),  # layer1 programs: (role, a, b)
        ("gtab", (GT, 3), i64), ("grows", (W * S, top_k), i64), ("gw", (W * S, top_k), f32),
        ("gtok", (W * S,), i64),  # layer1 reduce groups: destination tiles; act rows, weights and token per group
        ("params", (16,), i64),
        ("sig0", (W, nc_max), i64),  # layer0: rows of source s pushed by its sender c
        ("sig1", (W, NB, nc_max), i64),  # layer1: block j of expert rank r's partials pushed by its sender c
        ("tflag", (RT * NCT1,), i64),  # layer1: GEMM tile done (local)
    ]
    if trace_cap:
        bufs.append(("trace", (4 + 3 * trace_cap,), i64))
    if virtual:  # each virtual rank's experts, reachable through the base table
        bufs += [("w_gu", (EL, 2 * FF, H), dtype), ("w_down", (EL, H, FF), dtype)]
    return bufs


def comet_heap_bytes(world: int, max_tokens: int, top_k: int, hidden: int, ffn: int, num_experts: int,
                     dtype: torch.dtype = torch.float32, tiles=(16, 16, 16), nc_max: int = 8, trace_cap: int = 0,
                     virtual: bool = False) -> int:
    """Bytes of a fresh heap that `create_comet_context` fills with these arguments (alignment included)."""
    total = ALIGN  # the heap's own error slot
    for _, shape, dt in _buffers(world, max_tokens, top_k, hidden, ffn, max(num_experts, world), dtype, tiles,
                                 nc_max, trace_cap, virtual):
        n = torch.Size(shape).numel() * torch.empty((), dtype=dt).element_size()
        total += -(-n // ALIGN) * ALIGN
    return total


@dataclass
class CometContext:
    heap: object
    max_tokens: int  # per rank and call
    top_k: int
    hidden: int
    ffn: int  # expert intermediate size I (w_gate_up is [E_local, 2I, H])
    num_experts: int
    dtype: torch.dtype
    tiles: tuple  # BM, BN, BK of both grouped GEMMs
    nc_max: int
    buf: dict  # name -> heap tensor (rank `heap.rank`'s copy), shapes in `_buffers`
    timeout_s: float | None
    max_spins: int
    config: CometConfig | None = None  # fixed for every call; None: the tuner's table per token count
    trace_cap: int = 0
    epoch: int = 0
    last_grid: dict = field(default_factory=dict)  # "layer0" / "layer1": programs per rank of the last launch

    @property
    def world(self) -> int:
        return self.heap.world

    @property
    def experts_local(self) -> int:
        return self.num_experts // self.heap.world

    @property
    def rows_cap(self) -> int:  # rows per source
        return self.max_tokens * self.top_k

    @property
    def col_tiles(self) -> tuple[int, int]:  # (layer0 over I, layer1 over H)
        return triton.cdiv(self.ffn, self.tiles[1]), triton.cdiv(self.hidden, self.tiles[1])

    @property
    def nb_max(self) -> int:
        return self.buf["sig1"].shape[1]

    def ranks(self) -> list[int]:
        """The ranks this process hosts: all of them with virtual ranks, else its own."""
        return list(range(self.world)) if self.heap.virtual else [self.heap.rank]

    def view(self, name: str, r: int) -> torch.Tensor:
        """Rank r's copy of a heap buffer (host view)."""
        t = self.buf[name]
        return t if r == self.heap.rank and not self.heap.virtual else self.heap.peer(t, r)


def create_comet_context(heap, max_tokens: int, top_k: int, hidden: int, ffn: int, num_experts: int,
                         dtype: torch.dtype = torch.float32, timeout_s: float | None = None,
                         tiles=(16, 16, 16), nc_max: int = 8, config: CometConfig | None = None,
                         trace_cap: int = 0) -> CometContext:
    """Collective: buffers for up to `max_tokens` tokens per rank and call. `config` fixes (n_c, n_blocks)
    for every call (otherwise `comet_tune.select` per call); `trace_cap` > 0 makes the kernels log events
    (tests only). Bad or mismatched arguments raise the same error on every rank."""
    W = heap.world
    args = {"max_tokens": max_tokens, "top_k": top_k, "hidden": hidden, "ffn": ffn, "num_experts": num_experts,
            "dtype": str(dtype), "tiles": tuple(tiles), "nc_max": nc_max,
            "config": None if config is None else (config.n_c, config.n_blocks), "trace_cap": trace_cap}
    bad = None
    try:
        experts_per_rank(num_experts, W)
        if min(max_tokens, top_k, hidden, ffn, nc_max) < 1:
            raise ValueError(f"comet: max_tokens, top_k, hidden, ffn and nc_max must be >= 1, got {args}")
        need = comet_heap_bytes(W, max_tokens, top_k, hidden, ffn, num_experts, dtype, tiles, nc_max, trace_cap,
                                heap.virtual) - ALIGN
        free = heap.nbytes - -(-heap.used // ALIGN) * ALIGN
        if free < need:
            raise ValueError(f"comet: the heap has {free} free bytes, these buffers need {need} (comet_heap_bytes)")
        if nc_max & (nc_max - 1):
            raise ValueError(f"comet: nc_max must be a power of two, got {nc_max}")
        if config is not None and config.n_c > nc_max:
            raise ValueError(f"comet: config n_c={config.n_c} exceeds nc_max={nc_max}")
    except ValueError as e:
        bad = str(e)
    if heap.virtual:
        if bad:
            raise ps.DistArgumentError(bad)
    else:
        ps.check_consistent("create_comet_context", args, heap.group, bad)
    bufs = _buffers(W, max_tokens, top_k, hidden, ffn, num_experts, dtype, tuple(tiles), nc_max, trace_cap,
                    heap.virtual)
    buf = {name: heap.tensor(shape, dt, f"comet.{name}") for name, shape, dt in bufs}
    return CometContext(heap, max_tokens, top_k, hidden, ffn, num_experts, dtype, tuple(tiles), nc_max, buf,
                        timeout_s, waits.spins_for(timeout_s, heap.device), config, trace_cap)


@dataclass
class CometLayout:
    """What layer1 needs from layer0's call on rank `rank` (returned by `comet_layer0`, one per rank)."""

    rank: int
    epoch: int
    config: CometConfig
    config_source: str  # "fixed", "call", "cache", "shipped", "rule", ...
    num_tokens: int  # T: tokens this rank routed (layer1 returns [T, H])
    counts: torch.Tensor  # [W, W, E_local] (CPU): rows from source s to rank d for d's local expert e
    order: list[int]  # sources in compute order: this rank first, then circularly (r, r+1, ..., r-1)
    act_offsets: list[int]  # [W + 1]: act rows of source order[q] are act_offsets[q]:act_offsets[q + 1]
    row_tiles: int

    @property
    def rows(self) -> int:  # R, rows this rank computes
        return self.act_offsets[-1]

    def source_of_rows(self) -> torch.Tensor:
        """[R] the source rank of each act row."""
        return torch.repeat_interleave(torch.tensor(self.order), torch.tensor(self.act_offsets).diff())


def check_input(name: str, t: torch.Tensor, shape: tuple, dtype, device) -> None:
    if tuple(t.shape) != tuple(shape) or t.dtype != dtype or t.device.type != torch.device(device).type:
        raise ValueError(f"{name}: expected {tuple(shape)} {dtype} on {torch.device(device).type}, "
                         f"got {tuple(t.shape)} {t.dtype} on {t.device}")


def agree(ctx: CometContext) -> tuple[torch.Tensor, list[int], CometConfig, str]:
    """After the barrier: every rank's published meta -> (counts [W, W, EL], tokens per rank, config, source).
    Every rank reads the same data, so every rank takes the same decision or raises the same error."""
    W, EL, parity = ctx.world, ctx.experts_local, ctx.epoch % 2
    metas = torch.stack([ctx.heap.peer(ctx.buf["meta"], s)[parity].cpu() for s in range(W)])  # [W, W EL + 4]
    counts = metas[:, : W * EL].reshape(W, W, EL)
    tokens = metas[:, W * EL].tolist()
    asked = {tuple(m) for m in metas[:, W * EL + 1: W * EL + 3].tolist()}
    max_blocks = min(ctx.nb_max, ctx.col_tiles[1])
    if len(asked) > 1:
        raise ps.DistArgumentError(f"comet layer0: ranks asked for different (n_c, n_blocks): {sorted(asked)}")
    (n_c, nb), = asked
    if n_c:
        if n_c > ctx.nc_max or nb > max_blocks:
            raise ps.DistArgumentError(f"comet layer0: config (n_c={n_c}, n_blocks={nb}) exceeds this context's "
                                       f"nc_max={ctx.nc_max} / {max_blocks} column blocks")
        return counts, tokens, CometConfig(n_c, nb), "fixed" if ctx.config else "call"
    key = TuneKey(comet_tune.bucket(sum(tokens)), ctx.num_experts, ctx.top_k, W, ctx.hidden, ctx.ffn,
                  device_kind(ctx.heap.device))
    cfg, src = comet_tune.select(key, ctx.nc_max, max_blocks)
    return counts, tokens, cfg, src


def device_kind(device) -> str:
    device = torch.device(device)
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def compute_order(r: int, W: int) -> list[int]:
    """Sources in the order rank r computes them: itself first, then circularly (flux `shift_rank_to_order`
    in one node)."""
    return [(r + q) % W for q in range(W)]


def push_order(r: int, W: int) -> list[int]:
    """Peers in the order rank r sends to them: rank r - 1 computes r's rows right after its own, so it goes
    first, then r - 2, ...: every receiver gets its sources in the order it computes them."""
    return [(r - q) % W for q in range(1, W)]


def row_tiles(counts: torch.Tensor, r: int, S: int, BM: int) -> tuple[list[list[int]], list[int]]:
    """Rank r's GEMM row tiles over its received rows (counts [W, W, EL]): (rows of rtab, act_offsets [W + 1]).
    Rows are sorted by (source in compute order, local expert), as received; no tile straddles two groups."""
    W = counts.shape[0]
    tab, offsets, a = [], [0], 0
    for s in compute_order(r, W):
        v = s * S  # first recv row of source s
        for e, n in enumerate(counts[s, r].tolist()):
            for i in range(0, n, BM):
                tab.append([s, e, a + i, a + n, v + i])
            a, v = a + n, v + n
        offsets.append(a)
    return tab, offsets


def write_rows(t: torch.Tensor, rows: list[list[int]]) -> None:
    if rows:
        t[: len(rows)].copy_(torch.tensor(rows, dtype=t.dtype))


def reset_trace(ctx: CometContext, r: int) -> None:
    if ctx.trace_cap:
        tr = ctx.view("trace", r)
        tr[0], tr[1] = 0, ctx.trace_cap


def read_trace(ctx: CometContext, r: int | None = None) -> list[tuple[int, int, int]]:
    """The events the last launch logged on rank r, in logging order: (kind, a, b) (tests only)."""
    tr = ctx.view("trace", ctx.heap.rank if r is None else r).cpu()
    n = min(int(tr[0]), ctx.trace_cap)
    return [tuple(x) for x in tr[4: 4 + 3 * n].view(n, 3).tolist()]
