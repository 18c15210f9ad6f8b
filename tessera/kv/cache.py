"""The KV-cache protocol and the dense cache.

A cache backend owns where keys and values live and how a layer attends over them. The attention
layer only calls `attend(layer, q, k, v, ctx)`; the engine only calls `select()` (drop finished
sequences), `nbytes()` and the press hooks. Compression methods ("presses") act on a backend
through `keep()`, which physically gathers the kept slots and shrinks the tensors, so the memory
a press saves is memory really freed.

Layout of the dense cache, per layer: keys/values `[B, Hkv, C, D]` with capacity C shared by the
batch, a valid length per sequence and per layer (`lens[B]`: slot t holds a token iff t < lens[b]),
and the logical position of every slot (`pos[B, Hkv, C]`), because after per-head eviction slot t
of two heads can hold different tokens (DESIGN rule 5: positions are logical).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class StepContext:
    """What one forward pass needs to know besides the tensors (DESIGN rule 4)."""

    positions: torch.Tensor  # [B, S] logical positions of the new tokens
    new_lens: torch.Tensor  # [B] valid new tokens per sequence (prefill is right-padded)
    is_prefill: bool


def prefill_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, new_lens: torch.Tensor) -> torch.Tensor:
    """Causal attention over a right-padded prompt batch: q [B, Hq, S, D], k/v [B, H, S, D], new_lens [B]
    real tokens per row -> [B, Hq, S, D]. Padding sits after a row's real tokens, so the causal mask alone
    keeps it out of every real query (pad queries' outputs are never read). No explicit mask: with one,
    SDPA falls back to its math path and materialises [B, Hq, S, S] scores (16 GiB at 32K tokens);
    `is_causal` takes the flash kernel on CPU and GPU."""
    return F.scaled_dot_product_attention(q, k, v, is_causal=q.shape[2] > 1, enable_gqa=q.shape[1] != k.shape[1])


class KVCache:
    """Protocol every backend implements (dense here; R-KV presses act on it; ShadowKV replaces it)."""

    def attend(self, layer: int, q, k, v, ctx: StepContext) -> torch.Tensor:  # -> [B, Hq, S, D]
        raise NotImplementedError

    def select(self, rows: torch.Tensor) -> None:
        """Keep only batch rows `rows` (finished sequences leave the batch)."""
        raise NotImplementedError

    def nbytes(self) -> int:
        """Bytes of device memory the cache holds right now (allocated, not just used)."""
        raise NotImplementedError


class SparseDecodeCache(KVCache):
    """Backends that attend densely over the prompt and sparsely while decoding (ShadowKV, Quest):
    a prefill only `ingest`s the prompt's K/V into the backend's own layout (SharedPrefill calls
    `ingest` alone, to pay the dense attention once for several backends)."""

    def attend(self, layer: int, q, k, v, ctx: StepContext) -> torch.Tensor:
        if ctx.is_prefill:
            self.ingest(layer, k, v, ctx)
            return prefill_attention(q, k, v, ctx.new_lens)
        return self._decode(layer, q, k, v)

    def ingest(self, layer: int, k, v, ctx: StepContext) -> None:
        raise NotImplementedError

    def _decode(self, layer: int, q, k, v) -> torch.Tensor:
        raise NotImplementedError


class DenseCache(KVCache):
    def __init__(self, num_layers: int, batch: int, n_kv_heads: int, head_dim: int, dtype, device,
                 query_window: int = 0, growth: int = 256, track_attention: bool = False):
        self.L, self.B, self.H, self.D = num_layers, batch, n_kv_heads, head_dim
        self.dtype, self.device, self.growth = dtype, torch.device(device), growth
        self.k = [torch.empty(batch, n_kv_heads, 0, head_dim, dtype=dtype, device=device) for _ in range(num_layers)]
        self.v = [t.clone() for t in self.k]
        self.pos = [torch.empty(batch, n_kv_heads, 0, dtype=torch.int32, device=device) for _ in range(num_layers)]
        self.lens = [torch.zeros(batch, dtype=torch.long, device=device) for _ in range(num_layers)]
        # Ring of the last `query_window` post-RoPE queries per layer, for presses that score
        # with real queries (R-KV, SnapKV-decode). [B, Hq, W, D], oldest first.
        self.query_window = query_window
        self.queries: list[torch.Tensor | None] = [None] * num_layers
        # Optional per-slot attention mass received so far, summed over every query and over the
        # query heads of a KV head's group ([B, Hkv, C] fp32). Only H2O needs it: it costs one
        # extra QK^T per step, so a press declares `needs_attention` and only then is it kept.
        self.attn_sums: list[torch.Tensor] | None = (
            [torch.zeros(batch, n_kv_heads, 0, device=device) for _ in range(num_layers)] if track_attention else None)
        # Soft cap on capacity growth, set by decode-time presses to budget + buffer, so that a
        # growth step never allocates slots the press will never let the sequence use.
        self.max_capacity: int | None = None

    # ---- protocol -------------------------------------------------------------------------
    def attend(self, layer, q, k, v, ctx):
        B, _, S, _ = k.shape  # k, v [B, Hkv, S, D] post-RoPE; q [B, Hq, S, D]
        old = self.lens[layer]
        self._reserve(layer, int((old + ctx.new_lens).max()))
        kc, vc, pc = self.k[layer], self.v[layer], self.pos[layer]
        if S == 1:
            rows = torch.arange(B, device=k.device)
            kc[rows, :, old] = k[:, :, 0]
            vc[rows, :, old] = v[:, :, 0]
            pc[rows, :, old] = ctx.positions[:, :1].to(torch.int32).expand(B, self.H)
        else:
            for b in range(B):  # prefill: one slice per sequence (prompts have different lengths)
                o, n = int(old[b]), int(ctx.new_lens[b])
                kc[b, :, o : o + n] = k[b, :, :n]
                vc[b, :, o : o + n] = v[b, :, :n]
                pc[b, :, o : o + n] = ctx.positions[b, :n].to(torch.int32)
        new = old + ctx.new_lens
        self.lens[layer] = new
        T = int(new.max())
        if S > 1 and self.attn_sums is None and not bool(old.any()):  # a fresh prefill: causal over the prompt
            out = prefill_attention(q, k, v, ctx.new_lens)
            if self.query_window:
                self._record_queries(layer, q, ctx)
            return out
        slot = torch.arange(T, device=k.device)
        # key slot j is visible to new token i of row b iff j < old[b] + i + 1 (causal) and j < new[b]
        limit = torch.minimum(old[:, None] + torch.arange(S, device=k.device)[None] + 1, new[:, None])  # [B, S]
        mask = slot[None, None, :] < limit[:, :, None]  # [B, S, T]
        out = F.scaled_dot_product_attention(
            q, kc[:, :, :T], vc[:, :, :T], attn_mask=mask[:, None], enable_gqa=q.shape[1] != self.H
        )
        if self.query_window:
            self._record_queries(layer, q, ctx)
        if self.attn_sums is not None:
            qvalid = torch.arange(S, device=k.device)[None] < ctx.new_lens[:, None]  # [B, S]: not padding
            self._accumulate_attention(layer, q, kc[:, :, :T], mask & qvalid[:, :, None])
        return out

    def select(self, rows):
        for li in range(self.L):
            self.k[li], self.v[li] = self.k[li][rows], self.v[li][rows]
            self.pos[li], self.lens[li] = self.pos[li][rows], self.lens[li][rows]
            if self.queries[li] is not None:
                self.queries[li] = self.queries[li][rows]
            if self.attn_sums is not None:
                self.attn_sums[li] = self.attn_sums[li][rows]
        self.B = len(rows)
        self.shrink()

    def nbytes(self) -> int:
        n = 0
        for li in range(self.L):
            n += sum(t.numel() * t.element_size() for t in (self.k[li], self.v[li], self.pos[li]))
            if self.queries[li] is not None:
                n += self.queries[li].numel() * self.queries[li].element_size()
            if self.attn_sums is not None:
                n += self.attn_sums[li].numel() * self.attn_sums[li].element_size()
        return n

    # ---- what presses use -----------------------------------------------------------------
    def capacity(self, layer: int = 0) -> int:
        return self.k[layer].shape[2]

    def keep(self, layer: int, rows: torch.Tensor, idx: torch.Tensor) -> None:
        """Keep, for batch rows `rows` [R], only slots `idx` [R, Hkv, n] (in that order) of `layer`.

        The kept tokens move to slots [0, n); other rows are untouched. Call `shrink()` after the
        last layer to release the freed capacity.
        """
        n = idx.shape[-1]
        kc, vc, pc = self.k[layer], self.v[layer], self.pos[layer]
        gi = idx[..., None].expand(-1, -1, -1, self.D)
        kc[rows, :, :n] = kc[rows].gather(2, gi)
        vc[rows, :, :n] = vc[rows].gather(2, gi)
        pc[rows, :, :n] = pc[rows].gather(2, idx.to(torch.long)).to(torch.int32)
        if self.attn_sums is not None:
            a = self.attn_sums[layer]
            a[rows, :, :n] = a[rows].gather(2, idx.to(torch.long))
            a[rows, :, n:] = 0  # freed slots will receive new tokens: they start with no mass
        self.lens[layer][rows] = n

    def shrink(self, extra: int = 0) -> None:
        """Reallocate every layer to exactly max(lens) + extra slots, freeing the rest."""
        for li in range(self.L):
            cap = int(self.lens[li].max()) + extra if self.B else 0
            if cap < self.capacity(li):
                self.k[li] = self.k[li][:, :, :cap].clone()
                self.v[li] = self.v[li][:, :, :cap].clone()
                self.pos[li] = self.pos[li][:, :, :cap].clone()
                if self.attn_sums is not None:
                    self.attn_sums[li] = self.attn_sums[li][:, :, :cap].clone()

    # ---- internals ------------------------------------------------------------------------
    def _reserve(self, layer: int, needed: int) -> None:
        cap = self.capacity(layer)
        if needed <= cap:
            return
        # grow in fixed steps: amortised copies, and no more than `growth` unused slots held
        new_cap = cap + max(self.growth, needed - cap)
        if self.max_capacity is not None and needed <= self.max_capacity:
            new_cap = min(new_cap, self.max_capacity)
        pad = new_cap - cap
        self.k[layer] = torch.cat([self.k[layer], self.k[layer].new_zeros(self.B, self.H, pad, self.D)], 2)
        self.v[layer] = torch.cat([self.v[layer], self.v[layer].new_zeros(self.B, self.H, pad, self.D)], 2)
        self.pos[layer] = torch.cat([self.pos[layer], self.pos[layer].new_full((self.B, self.H, pad), -1)], 2)
        if self.attn_sums is not None:
            a = self.attn_sums[layer]
            self.attn_sums[layer] = torch.cat([a, a.new_zeros(self.B, self.H, pad)], 2)

    def _record_queries(self, layer: int, q: torch.Tensor, ctx: StepContext) -> None:
        W = self.query_window
        if ctx.is_prefill:  # last W valid prompt queries of each row (right padding!)
            B, Hq, S, D = q.shape
            buf = q.new_zeros(B, Hq, W, D)
            for b in range(B):
                n = int(ctx.new_lens[b])
                take = min(W, n)
                buf[b, :, W - take :] = q[b, :, n - take : n]
            self.queries[layer] = buf
        else:
            prev = self.queries[layer]
            self.queries[layer] = q if prev is None else torch.cat([prev, q], 2)[:, :, -W:]

    def _accumulate_attention(self, layer: int, q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor) -> None:
        """Add the softmax attention of the new queries (q [B, Hq, S, D] over k [B, Hkv, T, D],
        visibility mask [B, S, T]) to `attn_sums[layer]`, summed over queries and the GQA group.
        Padded prefill queries are masked out entirely by the caller and contribute nothing."""
        B, Hq, S, D = q.shape
        G = Hq // self.H
        logits = torch.einsum("bhgsd,bhtd->bhgst", q.float().view(B, self.H, G, S, D), k.float()) / D**0.5
        logits = logits.masked_fill(~mask[:, None, None], float("-inf"))
        p = torch.softmax(logits, -1).nan_to_num(0.0)  # rows with no visible key -> 0
        T = k.shape[2]
        self.attn_sums[layer][:, :, :T] += p.sum((2, 3))
