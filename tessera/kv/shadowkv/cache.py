"""ShadowKVCache: the KV backend "shadowkv" (Sun et al., arXiv 2410.21465; github.com/ByteDance-Seed/ShadowKV).

Prefill attends densely, then per layer and sequence keeps the low-rank pre-RoPE keys, landmarks, a
dense local window and outlier chunks on the fast tier and moves the context values to the host tier.
Each decode step selects the top chunks per KV head, rebuilds their keys and fetches their values (only
for chunks that were not already resident) and attends over [local | outliers | selected | decoded].

Rows of a batch have different prompt lengths, so prefill builds each row on its own and then pads them
into one `LayerState`; a decode step is a few batched ops over B x H heads (padding is masked), not a
loop over rows. Pure PyTorch on CPU; on CUDA the scoring, rebuild and decode attention go through Triton
kernels (tessera/kernels/shadowkv/*.py), so far checked only under the interpreter.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tessera.kv.backend import SparseDecodeCache, StepContext
from tessera.kv.shadowkv.lowrank import rebuild
from tessera.kv.shadowkv.options import ShadowKVOptions
from tessera.kv.shadowkv.selection import DISABLED, assign_slots, select_chunks
from tessera.kv.shadowkv.state import LayerState, build_row
from tessera.layers.rope import RotaryEmbedding


class ShadowKVCache(SparseDecodeCache):
    wants_pre_rope_keys = True

    def __init__(self, num_layers: int, n_kv_heads: int, head_dim: int, rope: RotaryEmbedding,
                 opts: ShadowKVOptions, device):
        self.L, self.H, self.D, self.opts = num_layers, n_kv_heads, head_dim, opts
        self.rank = opts.resolve_rank(n_kv_heads * head_dim)
        self.rope = rope.to(device)
        self.layers: list[LayerState | None] = [None] * num_layers
        self._pre_rope: list[torch.Tensor | None] = [None] * num_layers
        self.hits = self.lookups = 0

    # ---- protocol -------------------------------------------------------------------------
    def observe_pre_rope_keys(self, layer: int, k_pre: torch.Tensor, ctx: StepContext) -> None:
        if ctx.is_prefill:  # [B, H, S, D]; only the prompt is factorised, decoded keys stay dense
            self._pre_rope[layer] = k_pre

    def select(self, rows: torch.Tensor) -> None:
        for st in self.layers:
            if st is not None:
                st.select(rows)

    def nbytes(self) -> int:
        """Fast-tier (device) bytes held now, padding of ragged batches included (it is allocated)."""
        return sum(t.numel() * t.element_size() for st in self.layers if st is not None for t in st.fast_tensors())

    # ---- ShadowKV statistics --------------------------------------------------------------
    def host_nbytes(self) -> int:
        return sum(st.host.nbytes() for st in self.layers if st is not None and st.host is not None)

    def bytes_transferred(self) -> int:
        """Value bytes moved host -> fast tier so far, over all layers and rows (departed rows included)."""
        return sum(st.host.bytes_fetched for st in self.layers if st is not None and st.host is not None)

    def hit_rate(self) -> float:
        """Fraction of selected chunks that were already resident from the previous step."""
        return self.hits / self.lookups if self.lookups else 0.0

    # ---- internals ------------------------------------------------------------------------
    def ingest(self, layer: int, k, v, ctx: StepContext) -> None:
        """Build the layer's state from a prompt's keys/values without attending (the attention output
        is the dense one, so a caller comparing backends can compute it once for all of them)."""
        if self.layers[layer] is not None:
            raise RuntimeError("shadowkv: a second prefill into a filled cache (chunked prefill) is not supported")
        k_pre = self._pre_rope[layer]
        if k_pre is None:
            raise RuntimeError("shadowkv: no pre-RoPE keys were observed; the attention layer must honour "
                               "`wants_pre_rope_keys`")
        self._pre_rope[layer] = None
        n = ctx.new_lens
        rows = [build_row(k_pre[b, :, :nb], k[b, :, :nb], v[b, :, :nb], int(ctx.positions[b, 0]), self.opts, self.rank)
                for b, nb in enumerate(n.tolist())]
        self.layers[layer] = LayerState.pack(rows, self.opts.chunk_size)

    def _decode(self, layer, q, k, v):
        B, Hq, S, D = q.shape  # q [B, Hq, 1, D]; k, v [B, H, 1, D] post-RoPE
        if S != 1:
            raise ValueError(f"shadowkv decodes one token per step, got {S}")
        st = self.layers[layer]
        st.gen.append(k, v)
        if st.sparse:
            self._refresh_slots(st, q[:, :, 0])
        keys = torch.cat([st.local_k, st.sel_k, st.gen.keys()], 2)  # [B, H, T, D]
        vals = torch.cat([st.local_v, st.sel_v, st.gen.values()], 2)
        valid = torch.cat([st.static_valid, st.static_valid.new_ones(B, st.gen.len)], 1)  # [B, T]
        dense = bool(valid.all())  # no padding: skip the mask
        if q.is_cuda:  # Triton GQA decode over the gathered buffer of all B x H heads; SDPA is its reference
            from tessera.kernels.shadowkv.attn import decode_attention

            T = keys.shape[2]
            out = decode_attention(q.reshape(B * Hq, D), keys.reshape(B * self.H, T, D), vals.reshape(B * self.H, T, D),
                                   None if dense else valid[:, None].expand(B, self.H, T).reshape(B * self.H, T))
            return out.view(B, Hq, 1, D)
        return F.scaled_dot_product_attention(q, keys, vals, attn_mask=None if dense else valid[:, None, None],
                                              enable_gqa=Hq != self.H)

    def _refresh_slots(self, st: LayerState, q: torch.Tensor) -> None:
        """q [B, Hq, D]: choose this step's chunks, rebuild/fetch only those not already in a slot."""
        C, H, D = self.opts.chunk_size, self.H, self.D
        B, Hq, _ = q.shape
        K = st.slot_ids.shape[2]
        wanted = select_chunks(q.reshape(B * H, Hq // H, D), st.landmarks.flatten(0, 1),
                               st.landmark_ids.reshape(B * H, -1), st.n_landmarks, K)  # [B*H, K]
        slots = st.slot_ids.view(B * H, K)
        wanted = torch.where(slots == DISABLED, DISABLED, wanted)  # a row's slots past its own budget stay unused
        bh, where, chunks, hits = assign_slots(slots, wanted)
        self.hits += hits
        self.lookups += int((wanted >= 0).sum())
        if bh.numel() == 0:
            return
        T = st.u.shape[1]  # context rows per batch row in the flattened U [B*T, r]
        b = bh // H
        keys = rebuild(st.u.reshape(B * T, -1), st.sv.reshape(B * H, -1, D), bh, b * (T // C) + chunks, C,
                       st.pos0[b] - b * T, self.rope)  # [M, C, D]
        tok = (where[:, None] * C + torch.arange(C, device=where.device)).reshape(-1)  # [M*C] slot rows
        rows = bh[:, None].expand(-1, C).reshape(-1)
        st.sel_k.view(B * H, K * C, D)[rows, tok] = keys.reshape(-1, D)
        st.sel_v.view(B * H, K * C, D)[rows, tok] = st.host.fetch(bh, chunks).reshape(-1, D)
        slots[bh, where] = chunks
