"""A compiled decode step: the model's whole forward for one new token per row, as one `torch.compile` graph.

A decode step of a small model is hundreds of small ops; in eager mode each pays a Python dispatch, and on
the embedded models that is over half of the step (benchmarks/results/decode_floor_cpu.md). Compiled
(TorchInductor, weights frozen into the graph so the CPU linears use prepacked oneDNN kernels), the step runs
as a few fused kernels plus the GEMMs. The same idea as SGLang's `--enable-torch-compile` and vLLM's compiled
decode (there with CUDA graphs on top); opt in with `LLM(..., compile=True)` or `--compile`.

What the graph sees must be tensors only, so the step runs on `DecodeView`, a traceable stand-in for the dense
cache: the cache's own per-layer tensors, written in place at each row's length, and attention over the
whole capacity with the slots past a row's length masked out. Python decisions (growing the cache, whether a
press acts) stay outside, in `CompiledDecode.__call__` and the engine. Shapes are dynamic (batch size and
cache capacity are symbols), so a growing cache or a changing batch does not recompile; batch size 1 gets
its own graph (torch specialises sizes 0 and 1).

Eligible (`CompiledDecode.eligible`): one cohort on the dense backend whose press keeps no state inside
attention (no query window, no attention sums: no press, or a press that acts only between steps); the
engine runs the eager forward otherwise. Routed experts run inside the graph as one opaque op
(`tessera::routed_experts`), since their rows per expert are data-dependent.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F

from tessera.kv.backend import KVCache
from tessera.kv.cache import DenseCache, append_token


class DecodeView(KVCache):
    """One decode step over a dense cache's tensors, traceable: k/v [B, Hkv, C, D], pos [B, Hkv, C] per layer
    (capacity C > every row's length), lens [B] per layer (row b holds slots < lens[b])."""

    def __init__(self, k: list, v: list, pos: list, lens: list, positions: torch.Tensor, gqa: bool, span: int):
        self.k, self.v, self.pos, self.lens, self.positions = k, v, pos, lens, positions  # positions [B]
        self.span = span  # slots attention reads: the longest row's, new token included (a symbol, not a constant)
        self.gqa = gqa  # a Python bool: under dynamic shapes the head counts' comparison would be symbolic

    def attend(self, layer, q, k, v, ctx):  # q [B, Hq, 1, D], k/v [B, Hkv, 1, D] -> [B, Hq, 1, D]
        kc, vc, n = self.k[layer], self.v[layer], self.lens[layer]
        append_token(kc, vc, self.pos[layer], n, k, v, self.positions)
        visible = torch.arange(self.span, device=k.device)[None] <= n[:, None]  # [B, T]: old slots and the new one
        kc, vc = kc[:, :, : self.span], vc[:, :, : self.span]
        return F.scaled_dot_product_attention(q, kc, vc, attn_mask=visible[:, None, None],
                                              enable_gqa=self.gqa)


def _decode_forward(model, gqa, tok, positions, lens, k, v, pos, span):  # tok, positions [B] -> logits [B, V]
    view = DecodeView(k, v, pos, lens, positions, gqa, span)
    return model(tok[:, None], positions[:, None], view, None)[:, -1]


class CompiledDecode:
    """The compiled decode step of one model; compiles on the first call (tens of seconds on a small CPU)."""

    def __init__(self, model):
        blocked = [type(m).__name__ for m in model.modules()
                   if type(m).__module__.startswith(("tessera.quant", "tessera.layers.parallel_linear", "tessera.parallel"))]
        if blocked:
            raise ValueError(f"compile: not for quantized, tensor- or expert-parallel models (this one has {blocked[0]}); "
                             "run them eagerly")
        self.model, self.steps = model, 0  # steps: decode steps run compiled
        layout = model.kv_layout()
        gqa = layout.num_heads != layout.num_kv_heads
        self.fn = torch.compile(partial(_decode_forward, model, gqa), dynamic=True)

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
            cache.reserve(layer, span)
        # freezing: the weights become constants of the graph, so Inductor can prepack them for oneDNN's CPU
        # linears (passed as `options=` to torch.compile the setting does not reach the freezing pass);
        # cpp_wrapper: the graph's kernel calls are made from generated C++, not Python (1.9 -> 1.5 ms a step
        # for the dense reasoner at batch 8 on the 2-vCPU EPYC)
        with torch._inductor.config.patch(freezing=True, cpp_wrapper=True):
            logits = self.fn(tok, positions, cache.lens, cache.k, cache.v, cache.pos, span)
        cache.lens = [n + 1 for n in cache.lens]
        self.steps += 1
        return logits
