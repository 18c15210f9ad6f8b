"""The dense KV cache: the default backend (`make_cache("dense", ...)`) and the one presses act on.

Layout per layer: keys/values `[B, Hkv, C, D]` with capacity C shared by the batch, a valid length per
sequence and per layer (`lens[B]`: slot t holds a token iff t < lens[b]), and the logical position of
every slot (`pos[B, Hkv, C]`), because after per-head eviction slot t of two heads can hold different
tokens and a kept token must keep the RoPE of its true position. A press acts through `keep()`, which
physically gathers the kept slots, and `limit_capacity()`, which shrinks the tensors, so the memory a
press saves is memory really freed.

The backend protocol (`KVCache`, `StepContext`) lives in tessera.kv.backend and is re-exported here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tessera.kv.attention_sums import AttentionSums
from tessera.kv.backend import KVCache, SparseDecodeCache, StepContext, prefill_attention
from tessera.kv.press_target import PressTarget
from tessera.kv.query_ring import QueryRing
from tessera.kv.registry import register_backend

__all__ = ["GROWTH", "DenseCache", "KVCache", "SparseDecodeCache", "StepContext", "prefill_attention"]

#: slots a cache grows by at a time (amortised copies; at most GROWTH - 1 unused slots held per row)
GROWTH = 256


class DenseCache(KVCache, PressTarget):
    def __init__(self, num_layers: int, batch: int, n_kv_heads: int, head_dim: int, dtype, device,
                 growth: int = GROWTH):
        self.L, self.B, self.H, self.D = num_layers, batch, n_kv_heads, head_dim
        self.dtype, self.device, self.growth = dtype, torch.device(device), growth
        self.k = [torch.empty(batch, n_kv_heads, 0, head_dim, dtype=dtype, device=device) for _ in range(num_layers)]
        self.v = [t.clone() for t in self.k]
        self.pos = [torch.empty(batch, n_kv_heads, 0, dtype=torch.int32, device=device) for _ in range(num_layers)]
        self.lens = [torch.zeros(batch, dtype=torch.long, device=device) for _ in range(num_layers)]
        # what presses may ask for (PressTarget.request_*); None until one does
        self.ring: QueryRing | None = None
        self.sums: AttentionSums | None = None
        # Soft cap on capacity growth (`limit_capacity`), so that a growth step never allocates
        # slots a press will never let the sequence use.
        self.max_capacity: int | None = None

    # ---- KVCache --------------------------------------------------------------------------
    def attend(self, layer, q, k, v, ctx):
        B, _, S, _ = k.shape  # k, v [B, Hkv, S, D] post-RoPE; q [B, Hq, S, D]
        old = self.lens[layer]
        self.reserve(layer, int((old + ctx.new_lens).max()))
        kc, vc, pc = self.k[layer], self.v[layer], self.pos[layer]
        if S == 1:
            append_token(kc, vc, pc, old, k, v, ctx.positions[:, 0])
        else:
            for b in range(B):  # prefill: one slice per sequence (prompts have different lengths)
                o, n = int(old[b]), int(ctx.new_lens[b])
                kc[b, :, o : o + n] = k[b, :, :n]
                vc[b, :, o : o + n] = v[b, :, :n]
                pc[b, :, o : o + n] = ctx.positions[b, :n].to(torch.int32)
        new = old + ctx.new_lens
        self.lens[layer] = new
        T = int(new.max())
        if S > 1 and self.sums is None and not bool(old.any()):  # a fresh prefill: causal over the prompt
            out = prefill_attention(q, k, v, ctx.new_lens)
            if self.ring is not None:
                self.ring.record(layer, q, ctx)
            return out
        slot = torch.arange(T, device=k.device)
        # key slot j is visible to new token i of row b iff j < old[b] + i + 1 (causal) and j < new[b]
        limit = torch.minimum(old[:, None] + torch.arange(S, device=k.device)[None] + 1, new[:, None])  # [B, S]
        mask = slot[None, None, :] < limit[:, :, None]  # [B, S, T]
        out = F.scaled_dot_product_attention(
            q, kc[:, :, :T], vc[:, :, :T], attn_mask=mask[:, None], enable_gqa=q.shape[1] != self.H
        )
        if self.ring is not None:
            self.ring.record(layer, q, ctx)
        if self.sums is not None:
            qvalid = torch.arange(S, device=k.device)[None] < ctx.new_lens[:, None]  # [B, S]: not padding
            self.sums.add(layer, q, kc[:, :, :T], mask & qvalid[:, :, None])
        return out

    def select(self, rows):
        for li in range(self.L):
            self.k[li], self.v[li] = self.k[li][rows], self.v[li][rows]
            self.pos[li], self.lens[li] = self.pos[li][rows], self.lens[li][rows]
        for extra in (self.ring, self.sums):
            if extra is not None:
                extra.select(rows)
        self.B = len(rows)
        self.shrink()

    def extend(self, other: DenseCache) -> None:
        """Append the rows of `other` after this cache's rows (continuous batching: freshly prefilled
        sequences join a running batch). Both are padded to the larger capacity, and so is the press state
        they hold (a query ring, attention sums), which must be of the same kind: the caller merges only
        caches of one press, and only a press that schedules every row by itself (`per_row_schedule`)."""
        if (other.L, other.H, other.D, other.dtype) != (self.L, self.H, self.D, self.dtype):
            raise ValueError("extend: the caches hold different layers, heads, head dims or dtypes")
        if (self.ring is None) != (other.ring is None) or (self.sums is None) != (other.sums is None):
            raise ValueError("extend: one cache holds a press's queries or attention sums and the other does not")
        if self.ring is not None:
            self.ring.extend(other.ring)
        if self.sums is not None:
            self.sums.extend(other.sums, [max(self.capacity(li), other.capacity(li)) for li in range(self.L)])
        for li in range(self.L):
            cap = max(self.capacity(li), other.capacity(li))
            for name, fill in (("k", 0), ("v", 0), ("pos", -1)):
                a, b = getattr(self, name)[li], getattr(other, name)[li]
                getattr(self, name)[li] = torch.cat([_pad_slots(a, cap, fill), _pad_slots(b, cap, fill)])
            self.lens[li] = torch.cat([self.lens[li], other.lens[li]])
        self.B += other.B
        limits = (self.max_capacity, other.max_capacity)
        self.max_capacity = None if None in limits else max(limits)

    def nbytes(self) -> int:
        n = sum(t.numel() * t.element_size() for li in range(self.L) for t in (self.k[li], self.v[li], self.pos[li]))
        return n + sum(extra.nbytes() for extra in (self.ring, self.sums) if extra is not None)

    # ---- PressTarget: read ----------------------------------------------------------------
    @property
    def num_layers(self) -> int:
        return self.L

    def lengths(self, layer: int) -> torch.Tensor:
        return self.lens[layer]

    def keys(self, layer: int, rows: torch.Tensor, n: int) -> torch.Tensor:
        return self.k[layer][rows, :, :n]

    def positions(self, layer: int, rows: torch.Tensor, n: int) -> torch.Tensor:
        return self.pos[layer][rows, :, :n]

    # ---- PressTarget: optional state ------------------------------------------------------
    def request_queries(self, window: int) -> None:
        if self.ring is None:
            self.ring = QueryRing(self.L, window)
        elif self.ring.window != window:
            raise ValueError(f"query window already set to {self.ring.window}, asked for {window}")

    def window_queries(self, layer: int, rows: torch.Tensor) -> torch.Tensor:
        if self.ring is None:
            raise RuntimeError("window_queries: no press asked for queries (request_queries)")
        return self.ring.get(layer, rows)

    def request_attention_sums(self) -> None:
        if self.sums is None:
            self.sums = AttentionSums([self.capacity(li) for li in range(self.L)], self.B, self.H, self.device)

    def attention_sums(self, layer: int, rows: torch.Tensor, n: int) -> torch.Tensor:
        if self.sums is None:
            raise RuntimeError("attention_sums: no press asked for them (request_attention_sums)")
        return self.sums.get(layer, rows, n)

    # ---- PressTarget: act -----------------------------------------------------------------
    def keep(self, layer: int, rows: torch.Tensor, idx: torch.Tensor) -> None:
        n = idx.shape[-1]
        kc, vc, pc = self.k[layer], self.v[layer], self.pos[layer]
        gi = idx[..., None].expand(-1, -1, -1, self.D)
        kc[rows, :, :n] = kc[rows].gather(2, gi)
        vc[rows, :, :n] = vc[rows].gather(2, gi)
        pc[rows, :, :n] = pc[rows].gather(2, idx.to(torch.long)).to(torch.int32)
        if self.sums is not None:
            self.sums.keep(layer, rows, idx)
        self.lens[layer][rows] = n

    def limit_capacity(self, cap: int) -> None:
        self.max_capacity = cap
        self.shrink(extra=cap - int(self.lens[0].max()))

    def bound_capacity(self, slots: int) -> None:
        """Never grow past `slots` (what the rows held can reach): lowers the limit, never raises it."""
        self.limit_capacity(slots if self.max_capacity is None else min(self.max_capacity, slots))

    # ---- dense-cache housekeeping ---------------------------------------------------------
    def capacity(self, layer: int = 0) -> int:
        return self.k[layer].shape[2]

    def shrink(self, extra: int = 0) -> None:
        """Reallocate every layer to exactly max(lens) + extra slots, freeing the rest."""
        for li in range(self.L):
            cap = int(self.lens[li].max()) + extra if self.B else 0
            if cap < self.capacity(li):
                self.k[li] = self.k[li][:, :, :cap].clone()
                self.v[li] = self.v[li][:, :, :cap].clone()
                self.pos[li] = self.pos[li][:, :, :cap].clone()
                if self.sums is not None:
                    self.sums.truncate(li, cap)

    def reserve(self, layer: int, needed: int) -> None:
        """Grow layer `layer` to hold at least `needed` slots per row (a no-op if it already does)."""
        cap = self.capacity(layer)
        if needed <= cap:
            return
        # grow in fixed steps: amortised copies, and no more than `growth` unused slots held; never past
        # a limit set before (the step engine sets one before the prefill: the rows' KV reservation)
        new_cap = cap + max(self.growth, needed - cap)
        if self.max_capacity is not None and needed <= self.max_capacity:
            new_cap = min(new_cap, self.max_capacity)
        pad = new_cap - cap
        self.k[layer] = torch.cat([self.k[layer], self.k[layer].new_zeros(self.B, self.H, pad, self.D)], 2)
        self.v[layer] = torch.cat([self.v[layer], self.v[layer].new_zeros(self.B, self.H, pad, self.D)], 2)
        self.pos[layer] = torch.cat([self.pos[layer], self.pos[layer].new_full((self.B, self.H, pad), -1)], 2)
        if self.sums is not None:
            self.sums.grow(layer, pad)


def append_token(kc, vc, pc, lens, k, v, positions) -> None:
    """Decode: write each row's new key / value / logical position at slot lens[b] of one layer's cache.
    kc / vc [B, Hkv, C, D], pc [B, Hkv, C], lens [B], k / v [B, Hkv, 1, D], positions [B]. Tensors only, so a
    compiled decode step (`tessera.engine.compiled_decode`) writes the cache the same way."""
    rows = torch.arange(k.shape[0], device=k.device)
    kc[rows, :, lens] = k[:, :, 0]
    vc[rows, :, lens] = v[:, :, 0]
    pc[rows, :, lens] = positions.to(torch.int32)[:, None].expand(-1, kc.shape[1])


def _pad_slots(t: torch.Tensor, cap: int, fill) -> torch.Tensor:
    """t [B, H, C, ...] -> [B, H, cap, ...], new slots set to `fill`."""
    if t.shape[2] == cap:
        return t
    pad = t.new_full((t.shape[0], t.shape[1], cap - t.shape[2], *t.shape[3:]), fill)
    return torch.cat([t, pad], 2)


@register_backend("dense")
def _dense(cfg, batch, dtype, device, press, **options) -> DenseCache:
    if options:
        raise ValueError(f"the dense KV backend takes no options, got {sorted(options)}")
    cache = DenseCache(cfg.num_hidden_layers, batch, cfg.num_key_value_heads, cfg.head_dim, dtype, device)
    if press is not None:
        press.prepare(cache)  # the press asks for the optional state it reads
    return cache
