"""Expert parallelism: the routed experts of every MoE layer sharded over a group of ranks.

    shard_experts(model, group, backend="torch" | "decomposed" | "pipelined" | "fused" | "comet")  # in place

Each rank keeps E / W experts (rank r: experts r E/W .. (r+1) E/W - 1); the router and Qwen2-MoE's shared
expert stay replicated, so every rank routes its own tokens, dispatches the (token, slot) pairs to the
experts' owners, runs its local experts over what it received, and combines the results at home with the
routing weights. Attention is untouched: each rank serves its own sequences (data parallel), as in
DeepSpeed-MoE and Megatron-Core's expert parallelism. Only the MoE block's routed-experts step changes
(`block.experts` becomes an `EPExperts`), so the block's forward is the same code with or without EP.

Dispatch implementations, one contract (`dispatch(x, ids, weights) -> rows grouped by local expert then
source rank, weights, layout`; `combine(rows, layout) -> [T, H]`):
- torch: `torch.distributed` all-to-all of counts, then rows (`tessera.parallel.ep_dispatch`);
- decomposed: one async send / receive per peer, each source's rows run through the experts as they land
  and sent straight back (`tessera.parallel.ep_decomposed`);
- pipelined: the tokens in chunks, chunk c+1's all-to-all in flight while chunk c's experts run (Tutel /
  FasterMoE; the baseline COMET is measured against; `tessera.parallel.ep_pipelined`);
- fused: Triton kernels that put rows into the peers' buffers on the symmetric heap with ready flags
  (`tessera.kernels.moe.ep_a2a`, one heap and one set of buffers for all layers, sized for `max_tokens`
  tokens per rank and forward).
- comet: COMET's fused layers (arXiv 2502.19811; `tessera.kernels.moe.comet_layer0/1`): dispatch fused with
  the first grouped GEMM and SwiGLU, the second grouped GEMM fused with the top-k reduce and combine, so
  there is no separate dispatch or combine step (the whole layer is timed as "experts").
"""

from __future__ import annotations

import torch
from torch import nn

from tessera.distributed import parallel_state as ps
from tessera.layers import experts as X
from tessera.parallel import ep_decomposed, ep_dispatch, ep_pipelined
from tessera.parallel.ep_stats import EPStats

BACKENDS = ("torch", "decomposed", "pipelined", "fused", "comet")
MAX_TOKENS = 4096  # per rank and forward, for the fused buffers (a prefill of more is refused on every rank)


class EPComm:
    """The group and the dispatch implementation every expert-parallel layer of one model shares."""

    def __init__(self, group, backend: str, ctx=None, timeout_s: float | None = 60.0):
        self.group, self.backend, self.ctx = group, backend, ctx
        self.timeout_s = timeout_s or ep_decomposed.TIMEOUT_S

    def dispatch(self, x, ids, weights, num_experts):
        if self.backend == "fused":
            from tessera.kernels.moe.ep_a2a import dispatch_fused

            return dispatch_fused(x, ids, weights, self.ctx)
        if self.backend == "decomposed":
            return ep_decomposed.dispatch(x, ids, weights, num_experts, self.group, self.timeout_s)
        return ep_dispatch.dispatch(x, ids, weights, num_experts, self.group)

    def combine(self, rows, layout):
        if self.backend == "fused":
            from tessera.kernels.moe.ep_a2a import combine_fused

            return combine_fused(rows, layout, self.ctx)
        if self.backend == "decomposed":
            return ep_decomposed.combine(rows, layout, self.group, self.timeout_s)
        return ep_dispatch.combine(rows, layout, self.group)

    def run(self, x, ids, weights, num_experts: int, experts_fn, stats: EPStats, local_weights=None) -> torch.Tensor:
        """The routed experts of one layer over the group: x [T, H], ids / weights [T, k] -> [T, H].
        `local_weights` ([EL, 2I, H], [EL, H, I]) are what the comet backend's fused GEMMs read."""
        if self.backend == "comet":
            from tessera.kernels.moe.comet_layer0 import comet_layer0
            from tessera.kernels.moe.comet_layer1 import comet_layer1

            with stats.timer("experts"):
                act, lay = comet_layer0(x, ids, weights, local_weights[0], self.ctx)
                out = comet_layer1(act, local_weights[1], lay, self.ctx)
            r = lay.rank
            stats.add_counts(lay.counts[r].sum(1).tolist(), lay.counts[:, r].sum(1).tolist(),
                             x.shape[1] * x.element_size())
            return out
        if self.backend == "decomposed":  # dispatch, experts and combine interleaved per peer
            out, layout = ep_decomposed.run_overlapped(x, ids, weights, num_experts, experts_fn, self.group,
                                                       self.timeout_s, timer=stats.timer)
        elif self.backend == "pipelined":  # token chunks: chunk c+1's all-to-all under chunk c's experts
            out, layouts = ep_pipelined.run_pipelined(x, ids, weights, num_experts, experts_fn, self.group,
                                                      timer=stats.timer)
            for layout in layouts:
                stats.add_exchange(layout, x.shape[1] * x.element_size())
            return out
        else:
            with stats.timer("dispatch"):
                rows, _, layout = self.dispatch(x, ids, weights, num_experts)
            with stats.timer("experts"):
                y = experts_fn(rows, layout.expert_offsets)
            with stats.timer("combine"):
                out = self.combine(y, layout)
        stats.add_exchange(layout, x.shape[1] * x.element_size())
        return out

    def close(self):
        if self.ctx is not None:
            self.ctx.heap.close()


class EPExperts(nn.Module):
    """This rank's E / W experts of one layer, in place of `Experts`: same call, `(x, ids, weights) -> [T, H]`."""

    def __init__(self, experts: nn.Module, comm: EPComm, stats: EPStats):
        super().__init__()
        W, r = ps.world_size(comm.group), ps.rank(comm.group)
        E = experts.num_experts
        local = E // W
        self.comm, self.stats, self.total_experts = comm, stats, E
        with torch.no_grad():  # this rank's slice of the experts
            self.gate_up_proj = nn.Parameter(experts.gate_up_proj[r * local:(r + 1) * local].clone())  # [E/W, 2I, H]
            self.down_proj = nn.Parameter(experts.down_proj[r * local:(r + 1) * local].clone())  # [E/W, H, I]

    @property
    def num_experts(self) -> int:  # local experts
        return self.gate_up_proj.shape[0]

    def _local(self, rows, offsets):  # rows [R, H] grouped by local expert -> [R, H]
        return X.grouped_swiglu(rows, offsets, self.gate_up_proj, self.down_proj)

    def forward(self, x, ids, weights):  # x [T, H], ids / weights [T, k] (global expert ids) -> [T, H]
        return self.comm.run(x, ids, weights, self.total_experts, self._local, self.stats,
                             (self.gate_up_proj, self.down_proj))


def shard_experts(model, group=None, backend: str = "torch", max_tokens: int = MAX_TOKENS,
                  timeout_s: float | None = 60.0) -> EPComm:
    """Replace every MoE block of `model` by its expert-parallel version; returns the shared EPComm (keep it
    alive with the model; `model.ep_comm` holds it). Raises the same one-line ValueError on every rank when
    the experts do not divide over the group or the model has no routed layers."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown expert-parallel backend {backend!r}; choose one of {BACKENDS}")
    blocks, cfg = model.moe_blocks(), model.config
    if not blocks:
        raise ValueError("expert parallelism needs an MoE model; this one has no routed layers")
    W = ps.world_size(group)
    if cfg.num_experts % W:
        raise ValueError(f"expert parallelism over {W} ranks needs num_experts={cfg.num_experts} divisible by {W}")
    ctx = None
    if backend == "fused":
        from tessera.distributed.symm import SymmetricHeap
        from tessera.kernels.moe.ep_a2a import create_ep_a2a_context, ep_a2a_heap_bytes

        p = next(model.parameters())
        args = (max_tokens, cfg.num_experts_per_tok, cfg.hidden_size, cfg.num_experts, p.dtype)
        heap = SymmetricHeap(ep_a2a_heap_bytes(W, *args), group, device=p.device)
        ctx = create_ep_a2a_context(heap, *args, timeout_s=timeout_s)
    if backend == "comet":
        from tessera.distributed.symm import SymmetricHeap
        from tessera.kernels.moe.comet_context import comet_heap_bytes, create_comet_context

        p = next(model.parameters())
        args = (max_tokens, cfg.num_experts_per_tok, cfg.hidden_size, cfg.moe_intermediate_size, cfg.num_experts,
                p.dtype)
        heap = SymmetricHeap(comet_heap_bytes(W, *args), group, device=p.device)
        ctx = create_comet_context(heap, *args, timeout_s=timeout_s)
    comm = EPComm(group, backend, ctx, timeout_s)
    for block in blocks.values():
        block.stats = EPStats(cfg.num_experts, W, ps.rank(group))
        block.experts = EPExperts(block.experts, comm, block.stats)
    model.ep_comm = comm
    return comm
