"""Quest: query-aware page selection over a fully resident KV cache, ShadowKV's accuracy baseline.

Quest (Tang et al., ICML 2024, arXiv 2406.10774; github.com/mit-han-lab/Quest) keeps, for every page of
`page_size` prompt tokens, the element-wise minimum and maximum of its post-RoPE keys. At a decode step
the upper bound of q . k over a page is sum_d max(q_d * min_d, q_d * max_d); the top pages per head are
attended in full, together with a dense local window and the decoded tokens. Unlike ShadowKV nothing is
compressed or offloaded (`nbytes` counts every key and value): Quest saves attention time, not memory.
Defaults follow the `QuestCache` the ShadowKV authors posted for their comparison (issue #2 there):
pages of 16 tokens and a 32-token local window.

GQA (Quest is written for MHA): a KV head's page score is the max of the bound over its query group,
as ShadowKV max-pools its landmark scores. Rows of a batch are padded like ShadowKV's (`state.py`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from tessera.kv.backend import SparseDecodeCache, StepContext
from tessera.kv.decoded import DecodedKV
from tessera.kv.registry import check_backend_args, register_backend


@dataclass(frozen=True)
class QuestOptions:
    sparse_budget: int = 2048  # prompt tokens attended per KV head and step (whole pages)
    page_size: int = 16
    local_tokens: int = 32  # the prompt's last tokens (at least this many) are always attended

    def __post_init__(self):
        if self.page_size < 1 or self.sparse_budget < 1 or self.local_tokens < 0:
            raise ValueError(f"quest: page_size and sparse_budget must be >= 1 and local_tokens >= 0, got {self}")
        if self.sparse_budget % self.page_size:
            raise ValueError(f"quest: sparse_budget={self.sparse_budget} must be a multiple of "
                             f"page_size={self.page_size} (whole pages are selected)")


def page_bounds(k: torch.Tensor, page_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """k [..., T, D] (T a multiple of page_size) -> element-wise min and max per page [..., T/P, D]."""
    pages = k.unflatten(-2, (k.shape[-2] // page_size, page_size))  # [..., n, P, D]
    return pages.amin(-2), pages.amax(-2)


def page_scores(q: torch.Tensor, kmin: torch.Tensor, kmax: torch.Tensor) -> torch.Tensor:
    """q [B, H, G, D], kmin/kmax [B, H, n, D] -> [B, H, n]: the upper bound of q . k over each page,
    max over the query group. max(q*lo, q*hi) is q*hi where q > 0 and q*lo where q < 0."""
    q = q.float()
    bound = q.clamp(min=0) @ kmax.float().transpose(-1, -2) + q.clamp(max=0) @ kmin.float().transpose(-1, -2)
    return bound.amax(2)


class QuestCache(SparseDecodeCache):
    def __init__(self, num_layers: int, n_kv_heads: int, head_dim: int, opts: QuestOptions):
        self.H, self.D, self.opts = n_kv_heads, head_dim, opts
        self.layers: list[dict | None] = [None] * num_layers

    def select(self, rows: torch.Tensor) -> None:
        for st in self.layers:
            if st is not None:
                for name, t in st.items():
                    if torch.is_tensor(t):
                        st[name] = t[rows]
                st["gen"].select(rows)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for st in self.layers if st is not None
                   for t in [*st.values(), *st["gen"].tensors()] if torch.is_tensor(t))

    def ingest(self, layer: int, k, v, ctx: StepContext) -> None:
        """Keep a prompt's pages, bounds and local window without attending (see ShadowKVCache.ingest)."""
        if self.layers[layer] is not None:
            raise RuntimeError("quest: a second prefill into a filled cache (chunked prefill) is not supported")
        B, H, S, D = k.shape
        P = self.opts.page_size
        n = ctx.new_lens  # [B]
        n_pages = ((n - self.opts.local_tokens).clamp(min=0) // P)  # [B] pages outside the local window
        T = int(n_pages.max()) * P  # padded context length
        ctx_k, ctx_v = k[:, :, :T].clone(), v[:, :, :T].clone()  # [B, H, T, D]; rows past a row's pages: padding
        kmin, kmax = page_bounds(ctx_k, P)  # [B, H, N, D]
        L = S - int((n_pages * P).min())
        local = torch.arange(L, device=k.device)[None] + (n_pages * P)[:, None]  # [B, L] source rows
        local_valid = local < n[:, None]
        idx = local.clamp(max=S - 1)[:, None, :, None].expand(B, H, L, D)
        n_sel = n_pages.clamp(max=self.opts.sparse_budget // P)  # [B] pages attended per step
        K = int(n_sel.max()) if B else 0
        sel_valid = (torch.arange(K, device=k.device)[None] < n_sel[:, None]).repeat_interleave(P, 1)  # [B, K*P]
        page_real = torch.arange(kmin.shape[2], device=k.device)[None] < n_pages[:, None]  # [B, N]
        self.layers[layer] = dict(
            ctx_k=ctx_k, ctx_v=ctx_v, kmin=kmin, kmax=kmax, n_pages=n_pages, page_real=page_real, sel_valid=sel_valid,
            local_k=k.gather(2, idx), local_v=v.gather(2, idx), local_valid=local_valid,
            gen=DecodedKV(B, H, D, k))

    def _decode(self, layer, q, k, v):
        B, Hq, S, D = q.shape  # q [B, Hq, 1, D]; k, v [B, H, 1, D] post-RoPE
        if S != 1:
            raise ValueError(f"quest decodes one token per step, got {S}")
        st, H, P = self.layers[layer], self.H, self.opts.page_size
        gen = st["gen"]
        gen.append(k, v)
        sel_valid = st["sel_valid"]  # [B, K*P]
        K = sel_valid.shape[1] // P
        if K:
            score = page_scores(q[:, :, 0].view(B, H, Hq // H, D), st["kmin"], st["kmax"])  # [B, H, N]
            page = score.masked_fill(~st["page_real"][:, None], float("-inf")).topk(K, -1).indices  # [B, H, K]
            tok = (page[..., None] * P + torch.arange(P, device=q.device)).flatten(2)  # [B, H, K*P]
            sel_k = st["ctx_k"].gather(2, tok[..., None].expand(-1, -1, -1, D))
            sel_v = st["ctx_v"].gather(2, tok[..., None].expand(-1, -1, -1, D))
        else:
            sel_k = sel_v = k.new_zeros(B, H, 0, D)
        keys = torch.cat([st["local_k"], sel_k, gen.keys()], 2)  # [B, H, T, D]
        vals = torch.cat([st["local_v"], sel_v, gen.values()], 2)
        valid = torch.cat([st["local_valid"], sel_valid, sel_valid.new_ones(B, gen.len)], 1)  # [B, T]
        mask = None if bool(valid.all()) else valid[:, None, None]
        return F.scaled_dot_product_attention(q, keys, vals, attn_mask=mask, enable_gqa=Hq != H)


@register_backend("quest")
def _quest(cfg, batch, dtype, device, press, **options) -> QuestCache:
    check_backend_args("quest", press, options, {"sparse_budget", "page_size", "local_tokens"})
    return QuestCache(cfg.num_hidden_layers, cfg.num_key_value_heads, cfg.head_dim, QuestOptions(**options))
