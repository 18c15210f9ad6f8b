"""A compiled decode step: the model's whole forward for one new token per row, as one `torch.compile` graph.

A decode step of a small model is hundreds of small ops; in eager mode each pays a Python dispatch, and on
the embedded models that is over half of the step (benchmarks/results/decode_floor_cpu.md). Compiled
(TorchInductor, weights frozen into the graph so the CPU linears use prepacked oneDNN kernels), the step runs
as a few fused kernels plus the GEMMs. The same idea as SGLang's `--enable-torch-compile` and vLLM's compiled
decode (there with CUDA graphs on top); opt in with `LLM(..., compile=True)` or `--compile`.

What the graph sees must be tensors only, so the step runs on `DecodeView`, a traceable stand-in for the dense
cache: the cache's own per-layer tensors, written in place at each row's length, and attention over the
longest row's span with the slots past a row's length masked out. Python decisions (growing the cache, whether a
press acts) stay outside, in `CompiledDecode.__call__` and the engine. Shapes are dynamic (batch size and
cache capacity are symbols), so a growing cache or a changing batch does not recompile; batch size 1 gets
its own graph (torch specialises sizes 0 and 1).

Eligible (`CompiledDecode.eligible`): one cohort on the dense backend whose press keeps no state inside
attention (no query window, no attention sums: no press, or a press that acts only between steps); the
engine runs the eager forward otherwise. Routed experts run inside the graph as a fused gather-and-reduce per
(token, slot) pair while the pairs are few, else as one opaque op (`tessera::routed_experts`), since their rows
per expert are data-dependent (`tessera.layers.experts.use_gathered`). Making the step also fuses the model's
q/k/v and gate/up projections in place (`tessera.quant.fuse_projections`).
"""

from __future__ import annotations

from functools import partial

import torch
from torch.fx.experimental import _config as fx_config

from tessera.kv.backend import KVCache
from tessera.kv.cache import DenseCache, append_token
from tessera.quant.fuse import fuse_projections


class DecodeView(KVCache):
    """One decode step over a dense cache's tensors, traceable: k/v [B, Hkv, C, D], pos [B, Hkv, C] per layer
    (capacity C > every row's length), lens [B] per layer (row b holds slots < lens[b])."""

    def __init__(self, k: list, v: list, pos: list, lens: list, positions: torch.Tensor, group: int, span: int):
        self.k, self.v, self.pos, self.lens, self.positions = k, v, pos, lens, positions  # positions [B]
        self.span = span  # slots attention reads: the longest row's, new token included (a symbol, not a constant)
        self.group = group  # query heads per KV head, a Python int (a symbolic head count would break the graph)

    def attend(self, layer, q, k, v, ctx):  # q [B, Hq, 1, D], k/v [B, Hkv, 1, D] -> [B, Hq, 1, D]
        kc, vc, n = self.k[layer], self.v[layer], self.lens[layer]
        append_token(kc, vc, self.pos[layer], n, k, v, self.positions)
        visible = torch.arange(self.span, device=k.device)[None] <= n[:, None]  # [B, T]: old slots and the new one
        kc, vc = kc[:, :, : self.span], vc[:, :, : self.span]  # [B, Hkv, T, D]
        B, Hq, _, D = q.shape
        # one query per row, written as multiply-and-sum rather than SDPA: Inductor fuses scores, mask, softmax
        # and the weighted sum into a few loops, where the CPU flash kernel paid ~0.1 ms of setup a layer
        # (the dense reasoner's step ~7% faster at batch 8, 2-vCPU EPYC)
        qg = q.reshape(B, Hq // self.group, self.group, 1, D)  # [B, Hkv, g, 1, D]
        scores = (qg * kc[:, :, None]).sum(-1) * D ** -0.5  # [B, Hkv, g, T]
        p = torch.softmax(scores.masked_fill(~visible[:, None, None], float("-inf")), dim=-1)
        return (p[..., None] * vc[:, :, None]).sum(-2).reshape(B, Hq, 1, D)


def _decode_forward(model, group, tok, positions, lens, k, v, pos, span):  # tok, positions [B] -> logits [B, V]
    view = DecodeView(k, v, pos, lens, positions, group, span)
    return model(tok[:, None], positions[:, None], view, None)[:, -1]


class CompiledDecode:
    """The compiled decode step of one model; compiles on the first call (tens of seconds on a small CPU)."""

    def __init__(self, model):
        blocked = [type(m).__name__ for m in model.modules()
                   if type(m).__module__.startswith(("tessera.quant", "tessera.layers.parallel_linear", "tessera.parallel"))]
        if blocked:
            raise ValueError(f"compile: not for quantized, tensor- or expert-parallel models (this one has {blocked[0]}); "
                             "run them eagerly")
        # q/k/v and gate/up as one linear each, in place (as vLLM loads them): on the embedded models a compiled
        # step's linears cost about their call overhead, so 17 calls instead of 29 made the dense step ~9%
        # faster (the eager prefill shares the fused weights)
        fuse_projections(model)
        self.model, self.steps = model, 0  # steps: decode steps run compiled
        layout = model.kv_layout()
        self.fn = torch.compile(partial(_decode_forward, model, layout.num_heads // layout.num_kv_heads), dynamic=True)

    @staticmethod
    def eligible(cohorts) -> bool:
        """True when the running batch can take the compiled step (see the module docstring)."""
        if len(cohorts) != 1:
            return False
        cache = cohorts[0].cache
        return type(cache) is DenseCache and cache.ring is None and cache.sums is None

    def __call__(self, cache: DenseCache, tok: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """tok, positions [B] -> logits [B, V]; appends the new token's K/V to `cache` like its `attend` does."""
        # every layer attends over the same span (one symbol in the graph): the longest row of any layer, new
        # token included; each layer grows to hold it (outside the graph)
        span = max(int(n.max()) for n in cache.lens) + 1
        for layer in range(cache.L):
            # one slot more than the span: with capacity == span the attended slice is the whole, contiguous
            # tensor, and a graph traced so guards on that equality, so the first step with capacity > span
            # recompiled (tens of seconds, in the middle of serving); kept apart, every step fits one graph
            cache.reserve(layer, span + 1)
        # freezing: the weights become constants of the graph, so Inductor can prepack them for oneDNN's CPU
        # linears (passed as `options=` to torch.compile the setting does not reach the freezing pass);
        # cpp_wrapper: the graph's kernel calls are made from generated C++, not Python (1.9 -> 1.5 ms a step
        # for the dense reasoner at batch 8 on the 2-vCPU EPYC). No duck sizing: by default sizes that happen to be
        # equal when a graph is traced share one symbol, and the cache capacity then got pinned to, e.g., the
        # expert count of the routing statistics (both 4 in `compile_now`'s short warm-up): a recompile later
        with torch._inductor.config.patch(freezing=True, cpp_wrapper=True), fx_config.patch(use_duck_shape=False):
            logits = self.fn(tok, positions, cache.lens, cache.k, cache.v, cache.pos, span)
        cache.lens = [n + 1 for n in cache.lens]
        self.steps += 1
        return logits
