"""ShadowKVCache: the KV backend "shadowkv" (Sun et al., arXiv 2410.21465; github.com/ByteDance-Seed/ShadowKV).

Prefill attends densely, then per layer and sequence keeps the low-rank pre-RoPE keys, landmarks, a
dense local window and outlier chunks on the fast tier and moves the context values to the host tier.
Each decode step selects the top chunks per KV head, rebuilds their keys and fetches their values (only
for chunks that were not already resident) and attends over [local | outliers | selected | decoded].

Pure-PyTorch reference path on CPU, one sequence at a time inside a step (rows have different prompt
lengths and therefore different chunk counts). On CUDA the scoring, rebuild and decode attention go
through Triton kernels (tessera/kernels/shadowkv_*.py), so far checked only under the interpreter.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tessera.kv.cache import KVCache, StepContext
from tessera.kv.shadowkv.lowrank import rebuild
from tessera.kv.shadowkv.options import ShadowKVOptions
from tessera.kv.shadowkv.selection import assign_slots, select_chunks
from tessera.kv.shadowkv.state import RowState, build_row
from tessera.layers.rope import RotaryEmbedding


class ShadowKVCache(KVCache):
    wants_pre_rope_keys = True

    def __init__(self, num_layers: int, n_kv_heads: int, head_dim: int, rope: RotaryEmbedding,
                 opts: ShadowKVOptions, device):
        self.L, self.H, self.D, self.opts = num_layers, n_kv_heads, head_dim, opts
        self.rank = opts.resolve_rank(n_kv_heads * head_dim)
        self.rope = rope.to(device)
        self.rows: list[list[RowState]] = [[] for _ in range(num_layers)]  # [layer][batch row]
        self._pre_rope: list[torch.Tensor | None] = [None] * num_layers
        self.hits = self.lookups = 0
        self._dropped_host_bytes = 0  # bytes fetched by rows that have since left the batch

    # ---- protocol -------------------------------------------------------------------------
    def observe_pre_rope_keys(self, layer: int, k_pre: torch.Tensor, ctx: StepContext) -> None:
        if ctx.is_prefill:  # [B, H, S, D]; only the prompt is factorised, decoded keys stay dense
            self._pre_rope[layer] = k_pre

    def attend(self, layer: int, q, k, v, ctx: StepContext) -> torch.Tensor:
        return self._prefill(layer, q, k, v, ctx) if ctx.is_prefill else self._decode(layer, q, k, v)

    def select(self, rows: torch.Tensor) -> None:
        keep = [int(r) for r in rows]
        for li in range(self.L):
            gone = set(range(len(self.rows[li]))) - set(keep)
            self._dropped_host_bytes += sum(self._fetched(self.rows[li][r]) for r in gone)
            self.rows[li] = [self.rows[li][r] for r in keep]

    def nbytes(self) -> int:
        """Fast-tier (device) bytes held now."""
        return sum(t.numel() * t.element_size() for rows in self.rows for s in rows for t in s.fast_tensors())

    # ---- ShadowKV statistics --------------------------------------------------------------
    def host_nbytes(self) -> int:
        return sum(s.host.nbytes() for rows in self.rows for s in rows if s.host is not None)

    def bytes_transferred(self) -> int:
        """Value bytes moved host -> fast tier so far, over all layers and rows."""
        live = sum(self._fetched(s) for rows in self.rows for s in rows)
        return live + self._dropped_host_bytes

    def hit_rate(self) -> float:
        """Fraction of selected chunks that were already resident from the previous step."""
        return self.hits / self.lookups if self.lookups else 0.0

    @staticmethod
    def _fetched(s: RowState) -> int:
        return s.host.bytes_fetched if s.host is not None else 0

    # ---- internals ------------------------------------------------------------------------
    def _prefill(self, layer, q, k, v, ctx):
        if self.rows[layer]:
            raise RuntimeError("shadowkv: a second prefill into a filled cache (chunked prefill) is not supported")
        k_pre = self._pre_rope[layer]
        if k_pre is None:
            raise RuntimeError("shadowkv: no pre-RoPE keys were observed; the attention layer must honour "
                               "`wants_pre_rope_keys`")
        self._pre_rope[layer] = None
        B, _, S, _ = k.shape
        n = ctx.new_lens
        i = torch.arange(S, device=k.device)
        mask = (i[None, None, :] <= i[None, :, None]) & (i[None, None, :] < n[:, None, None])  # [B, S, S]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None], enable_gqa=q.shape[1] != self.H)
        for b in range(B):
            nb = int(n[b])
            self.rows[layer].append(build_row(k_pre[b, :, :nb], k[b, :, :nb], v[b, :, :nb],
                                              int(ctx.positions[b, 0]), self.opts, self.rank))
        return out

    def _decode(self, layer, q, k, v):
        B, Hq, S, D = q.shape  # q [B, Hq, 1, D]; k, v [B, H, 1, D] post-RoPE
        if S != 1:
            raise ValueError(f"shadowkv decodes one token per step, got {S}")
        outs = []
        for b, s in enumerate(self.rows[layer]):
            s.append(k[b], v[b])
            if s.sparse:
                self._refresh_slots(s, q[b, :, 0])
                keys = torch.cat([s.local_k, s.sel_k, s.gen_k[:, :s.gen_len]], 1)  # [H, T, D]
                vals = torch.cat([s.local_v, s.sel_v, s.gen_v[:, :s.gen_len]], 1)
            else:
                keys = torch.cat([s.local_k, s.gen_k[:, :s.gen_len]], 1)
                vals = torch.cat([s.local_v, s.gen_v[:, :s.gen_len]], 1)
            if q.is_cuda:  # Triton GQA decode over the gathered buffer; SDPA is its reference on CPU
                from tessera.kernels.shadowkv_attn import decode_attention

                outs.append(decode_attention(q[b, :, 0], keys, vals)[None, :, None])
            else:
                outs.append(F.scaled_dot_product_attention(q[b:b + 1], keys[None], vals[None], enable_gqa=Hq != self.H))
        return torch.cat(outs, 0)  # [B, Hq, 1, D]

    def _refresh_slots(self, s: RowState, q: torch.Tensor) -> None:
        """q [Hq, D]: choose this step's chunks, rebuild/fetch only those not already in a slot."""
        C = self.opts.chunk_size
        wanted = select_chunks(q, s.landmarks, s.landmark_ids, s.slot_ids.shape[1]).long()  # [H, k]
        heads, slots, chunks, hits = assign_slots(s.slot_ids, wanted)
        self.hits += hits
        self.lookups += wanted.numel()
        if heads.numel() == 0:
            return
        tok = (slots[:, None] * C + torch.arange(C, device=slots.device)).reshape(-1)  # [M*C] slot rows
        hh = heads[:, None].expand(-1, C).reshape(-1)
        s.sel_k[hh, tok] = rebuild(s.u, s.sv, heads, chunks, C, s.pos0, self.rope).reshape(-1, self.D)
        s.sel_v[hh, tok] = s.host.fetch(heads, chunks).reshape(-1, self.D)
        s.slot_ids[heads, slots] = chunks
