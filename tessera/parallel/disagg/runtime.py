"""Disaggregated decoding (MegaScale-Infer, arXiv 2504.02263): attention on some ranks, the routed experts
on others, and a decode batch split into micro-batches that ping-pong between the two sides.

Attention ranks hold everything but the routed experts (embeddings, attention and its KV cache, norms,
routers, shared experts, lm_head) and serve their own sequences (data parallel). Expert ranks hold E / N
experts of every MoE layer (expert parallel over the expert ranks) and answer requests (`M2N.serve`).
Per MoE layer, an attention rank runs the attention half, routes, sends the rows to the expert ranks and,
instead of waiting, runs the next micro-batch's attention half; a micro-batch's expert results are
collected just before its next attention half:

    layer l:   attn(l, 0) send(l, 0) | attn(l, 1) send(l, 1) | ... | recv(l, 0) attn(l+1, 0) send(l+1, 0) ...
    experts:                 experts(l, 0)         experts(l, 1)    ...

so neither side idles when Ta ~ Te and m >= 2 (1 + Tc / Tf) (the paper's conditions; the simulator in
`pingpong.py` predicts the timing). The per-micro-batch KV caches are ordinary `tessera.kv` backends,
so presses and ShadowKV run on attention ranks unchanged. Dense layers of a mixed model stay whole on the
attention ranks.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field, replace

import torch
from torch import nn

from tessera.distributed import parallel_state as ps
from tessera.kernels.moe.ep_layout import combine_at_home, experts_per_rank, plan_sends
from tessera.kv import make_cache
from tessera.kv.cache import StepContext
from tessera.layers import experts as X
from tessera.layers.sampler import make_generators, sample
from tessera.parallel.disagg.m2n import M2NBase, make_m2n


@dataclass
class SideStats:
    """Seconds this rank spent computing (attention side: everything but waiting for the experts; expert
    side: the expert GEMMs) and in total, the requests it sent or served and (expert side) its expert calls
    (fewer than requests when requests of several attention ranks are batched)."""

    busy_s: float = 0.0
    total_s: float = 0.0
    requests: int = 0
    calls: int = 0
    bytes_sent: int = 0
    role: str = ""

    def line(self) -> str:
        util = self.busy_s / self.total_s if self.total_s else 0.0
        return (f"{self.role}: busy {self.busy_s * 1e3:.0f} ms of {self.total_s * 1e3:.0f} ms ({util:.0%}), "
                f"{self.requests} requests{f' in {self.calls} expert calls' if self.calls else ''}, "
                f"{self.bytes_sent / 2**20:.2f} MiB sent")


class RemoteExperts(nn.Module):
    """The routed-experts step of one MoE layer on an attention rank: the rows go to the expert ranks.
    `start` sends and returns at once; `finish` waits and combines at home with the routing weights."""

    def __init__(self, m2n: M2NBase, num_experts: int, layer_idx: int, stats: SideStats):
        super().__init__()
        self.m2n, self.num_experts, self.layer_idx, self.stats = m2n, num_experts, layer_idx, stats

    def start(self, x, ids, weights):  # x [T, H], ids / weights [T, k]
        plan = plan_sends(ids, self.num_experts, len(self.m2n.experts))
        pending = self.m2n.send(self.layer_idx, x[plan.token], plan.matrix)
        self.stats.requests += 1
        return plan, weights.flatten()[plan.order], x.shape[0], pending

    def finish(self, state) -> torch.Tensor:  # -> [T, H]
        plan, weight, T, pending = state
        t0 = time.perf_counter()
        back = self.m2n.recv(pending)
        self.stats.busy_s -= time.perf_counter() - t0  # waiting is not work
        return combine_at_home(back, plan.token, weight, T)

    def forward(self, x, ids, weights):
        return self.finish(self.start(x, ids, weights))


class ExpertShard:
    """An expert rank's experts: E / N of every MoE layer, nothing else of the model."""

    def __init__(self, model, index: int, count: int, stats: SideStats):
        local = experts_per_rank(model.config.num_experts, count)
        lo, hi = index * local, (index + 1) * local
        self.weights = {i: (b.experts.gate_up_proj[lo:hi].detach().clone(), b.experts.down_proj[lo:hi].detach().clone())
                        for i, b in model.moe_blocks().items()}  # {layer: ([EL, 2I, H], [EL, H, I])}
        self.stats = stats

    def __call__(self, layer: int, rows: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        t0 = time.perf_counter()
        with torch.inference_mode():
            y = X.grouped_swiglu(rows, offsets, *self.weights[layer])
        self.stats.busy_s += time.perf_counter() - t0
        self.stats.calls += 1
        return y


@dataclass
class MicroBatch:
    """One micro-batch's sequences on an attention rank: its own KV cache and decoding state."""

    seqs: list[int]  # indices into this rank's prompts
    cache: object
    press: object
    gens: list
    tok: torch.Tensor | None = None  # [n] next input token per row
    pos: torch.Tensor | None = None  # [n] its logical position
    decoded: torch.Tensor | None = None  # [n] tokens decoded so far (what presses schedule on)
    rows: list[int] = field(default_factory=list)  # live row -> index into seqs


def forward_micro_batches(model, inputs: list[tuple]) -> list[torch.Tensor]:
    """The model's forward over several micro-batches at once, layer by layer, with every MoE layer's
    routed experts in flight on the expert ranks while the next micro-batch's attention runs.
    inputs: (input_ids [B, S], positions [B, S], cache, ctx, logits_index [B] or None) per micro-batch."""
    xs, steps = [], []
    for ids, pos, cache, ctx, _ in inputs:
        x, step = model.embed(ids, pos, cache, ctx)
        xs.append(x)
        steps.append(step)
    pending: list = [None] * len(inputs)
    for layer in model.model.layers:
        remote = isinstance(getattr(layer.mlp, "experts", None), RemoteExperts)
        for i in range(len(inputs)):
            if pending[i] is not None:
                xs[i], pending[i] = _ffn_finish(*pending[i]), None
            h = layer.attention_half(xs[i], steps[i])
            if remote:
                pending[i] = _ffn_start(layer, h)
            else:
                xs[i] = layer.ffn_half(h)
    for i in range(len(inputs)):
        if pending[i] is not None:
            xs[i] = _ffn_finish(*pending[i])
    return [model.logits(x, inp[4]) for x, inp in zip(xs, inputs)]


def _ffn_start(layer, h):  # the FFN half up to the experts: [B, S, H] -> state
    flat = layer.post_attention_layernorm(h).reshape(-1, h.shape[-1])  # [T, H]
    weights, ids = layer.mlp.route(flat)
    return layer, h, flat, layer.mlp.experts.start(flat, ids, weights)


def _ffn_finish(layer, h, flat, state):  # the rest of it: residual + routed + shared experts
    return h + layer.mlp.add_shared(flat, layer.mlp.experts.finish(state)).reshape(h.shape)


class Disaggregated:
    """One rank's part of a disaggregated model (`setup` builds it on every rank of the launch)."""

    def __init__(self, model, m2n: M2NBase, stats: SideStats, shard: ExpertShard | None, batch: bool = False):
        self.model, self.m2n, self.stats, self.shard, self.batch = model, m2n, stats, shard, batch

    @property
    def is_attention(self) -> bool:
        return self.shard is None

    def serve(self) -> SideStats:
        """Expert ranks: answer the attention ranks until each has stopped (batched: one expert call per
        round over one request of every live attention rank)."""
        t0 = time.perf_counter()
        self.stats.requests = self.m2n.serve(self.shard, batch=self.batch)
        self.stats.total_s = time.perf_counter() - t0
        self.stats.bytes_sent = self.m2n.bytes_sent
        return self.stats

    @torch.inference_mode()
    def generate(self, prompts: list[list[int]], micro_batches: int, sp, stop_checker, kv: str = "dense",
                 kv_options: dict | None = None, press_factory=None) -> list:
        """Attention ranks: decode `prompts` (this rank's sequences) in `micro_batches` ping-pong micro-
        batches; `stop_checker()` makes each sequence's `StopChecker`. Returns them, in prompt order.
        Sends the expert ranks this rank's stop header at the end (also on error)."""
        t0 = time.perf_counter()
        try:
            stops = [stop_checker() for _ in prompts]
            if prompts:
                self._decode(prompts, micro_batches, sp, stops, kv, kv_options or {}, press_factory)
        except BaseException:
            with contextlib.suppress(Exception):  # tell the experts we are done; the first error is the news
                self.m2n.stop()
            raise
        else:
            self.m2n.stop()
            return stops
        finally:
            self.stats.total_s += time.perf_counter() - t0
            self.stats.busy_s += time.perf_counter() - t0  # RemoteExperts.finish took its waits off
            self.stats.bytes_sent = self.m2n.bytes_sent

    def _decode(self, prompts, m, sp, stops, kv, kv_options, press_factory) -> None:
        model, cfg = self.model, self.model.config
        p = next(model.parameters())
        dev, dtype = p.device, p.dtype
        lay = model.kv_layout()
        local = replace(cfg, num_attention_heads=lay.num_heads, num_key_value_heads=lay.num_kv_heads)
        m = max(1, min(m, len(prompts)))
        if m > self.m2n.slots:
            raise ValueError(f"{m} micro-batches need an M2N context with at least {m} result slots "
                             f"(setup(..., slots={m})); this one has {self.m2n.slots}")
        bounds = [len(prompts) * i // m for i in range(m + 1)]  # contiguous, sizes differ by at most one
        mbs, inputs = [], []
        for i in range(m):
            seqs = list(range(bounds[i], bounds[i + 1]))
            press = press_factory() if press_factory else None
            cache = make_cache(kv, local, len(seqs), dtype, dev, press, **kv_options)
            mb = MicroBatch(seqs, cache, press, make_generators(sp, len(seqs), dev), rows=list(range(len(seqs))))
            lens = torch.tensor([len(prompts[s]) for s in seqs], device=dev)
            S = int(lens.max())
            inp = torch.zeros(len(seqs), S, dtype=torch.long, device=dev)
            for r, s in enumerate(seqs):
                inp[r, : len(prompts[s])] = torch.tensor(prompts[s], device=dev)
            pos = torch.arange(S, device=dev).expand(len(seqs), S)
            inputs.append((inp, pos, cache, StepContext(positions=pos, new_lens=lens, is_prefill=True), lens - 1))
            mb.pos, mb.decoded = lens.clone(), torch.zeros(len(seqs), dtype=torch.long, device=dev)
            mbs.append(mb)
        logits = forward_micro_batches(model, inputs)
        for mb, lg in zip(mbs, logits):
            if mb.press is not None:
                mb.press.after_prefill(mb.cache, mb.decoded)
            mb.tok = sample(lg[:, -1], sp, mb.gens, mb.rows)
        max_len = cfg.max_position_embeddings
        while True:
            live = []
            for mb in mbs:
                keep = []
                for row, r in enumerate(mb.rows):
                    st = stops[mb.seqs[r]]
                    st.push(int(mb.tok[row]))
                    if not st.done and int(mb.pos[row]) >= max_len:
                        st.finish("length")
                    if not st.done:
                        keep.append(row)
                if keep and len(keep) < len(mb.rows):
                    idx = torch.tensor(keep, device=dev)
                    mb.cache.select(idx)
                    mb.rows = [mb.rows[k] for k in keep]
                    mb.tok, mb.pos, mb.decoded = mb.tok[idx], mb.pos[idx], mb.decoded[idx]
                if keep:
                    live.append(mb)
            if not live:
                return
            inputs = [(mb.tok[:, None], mb.pos[:, None], mb.cache,
                       StepContext(positions=mb.pos[:, None], new_lens=torch.ones_like(mb.pos), is_prefill=False),
                       None) for mb in live]
            logits = forward_micro_batches(model, inputs)
            mbs = live
            for mb, lg in zip(mbs, logits):
                mb.pos, mb.decoded = mb.pos + 1, mb.decoded + 1
                if mb.press is not None:
                    mb.press.after_decode(mb.cache, mb.decoded)
                mb.tok = sample(lg[:, -1], sp, mb.gens, mb.rows)


def setup(model, attn: int, expert: int, max_tokens: int = 4096, slots: int = 4,
          timeout_s: float = 60.0, backend: str = "p2p", batch: bool = False) -> Disaggregated:
    """Collective over a world of attn + expert ranks, every rank holding the same full model: named groups
    and roles, the M2N context of `backend` ("p2p" or "heap", `m2n.make_m2n`), and each rank's part (attention
    ranks drop the routed experts, expert ranks keep only their E / N of them); `batch`: expert ranks make
    one expert call per round of requests from all attention ranks. Refused with the same one-line error on every rank when the model has
    no routed experts or they do not divide over the expert ranks."""
    cfg = model.config
    if not model.moe_blocks():
        raise ValueError("disaggregation needs an MoE model; this one has no routed layers")
    if cfg.num_experts % expert:
        raise ValueError(f"disaggregation over {expert} expert ranks needs num_experts={cfg.num_experts} "
                         f"divisible by {expert}")
    ps.initialize_disaggregated(attn, expert)
    p = next(model.parameters())
    m2n = make_m2n(backend, list(range(attn)), list(range(attn, attn + expert)), cfg.hidden_size,
                   cfg.num_experts // expert, max_tokens * cfg.num_experts_per_tok, p.dtype, p.device, slots, timeout_s)
    stats = SideStats(role=f"{ps.role()} rank {ps.rank()}")
    if ps.role() == "attention":
        for i, block in model.moe_blocks().items():
            block.experts = RemoteExperts(m2n, cfg.num_experts, i, stats)  # the local copies are freed
        return Disaggregated(model, m2n, stats, None)
    shard = ExpertShard(model, ps.rank("expert"), expert, stats)
    return Disaggregated(None, m2n, stats, shard, batch)
