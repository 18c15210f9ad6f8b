"""What ShadowKV keeps for one layer after prefill, and how it is built.

Prefill builds one `RowState` per sequence (its own SVD, landmarks and outliers: prompts differ in
length), then `LayerState.pack` pads the rows into batch tensors so that every decode step runs as a
handful of batched ops instead of a Python loop over rows.

Fast tier: U [T, r], SV [H, r, D], landmarks + chunk ids, the dense local window and outlier chunks
(post-RoPE K and V), the sparse slots (rebuilt K, fetched V) and the decoded tokens. Host tier: the
values of every context chunk. A prompt with no chunk outside the local window keeps everything in the
local window: that is the dense fallback for short prompts (in a mixed batch its row simply has no slots).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tessera.kv.decoded import DecodedKV
from tessera.kv.shadowkv.host import HostValues
from tessera.kv.shadowkv.lowrank import factorize
from tessera.kv.shadowkv.options import ShadowKVOptions
from tessera.kv.shadowkv.selection import DISABLED, EMPTY, landmarks_and_outliers


@dataclass
class RowState:
    """One sequence's prompt after prefill: the input of `LayerState.pack`."""

    local_k: torch.Tensor  # [H, L, D] post-RoPE: local window, then outlier chunks (both static)
    local_v: torch.Tensor  # [H, L, D]
    pos0: int = 0  # logical position of context row 0
    u: torch.Tensor | None = None  # [T, r] low-rank pre-RoPE key factor (None: dense fallback)
    sv: torch.Tensor | None = None  # [H, r, D]
    landmarks: torch.Tensor | None = None  # [H, n, W] (W = D mean, 2D bounds)
    landmark_ids: torch.Tensor | None = None  # [H, n] chunk ids
    values: torch.Tensor | None = None  # [H, T, D] context values, bound for the host tier
    n_select: int = 0  # chunks selected per KV head and step

    @property
    def sparse(self) -> bool:
        return self.u is not None


def build_row(k_pre: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pos0: int, opts: ShadowKVOptions,
              rank: int) -> RowState:
    """One sequence's prompt: k_pre, k (post-RoPE), v [H, n, D] -> its ShadowKV state."""
    H, n, D = k.shape
    C = opts.chunk_size
    n_chunks = n // C - opts.local_chunks  # context chunks; the rest (local window + remainder) stays dense
    if n_chunks < 1:  # too short for the scheme: dense
        return RowState(local_k=k.clone(), local_v=v.clone(), pos0=pos0)
    T = n_chunks * C
    n_out = min(opts.outlier_chunks, n_chunks - 1)  # leave at least one chunk to select
    landmarks, ids, outliers = landmarks_and_outliers(k[:, :T], C, n_out, opts.landmark)
    # outlier chunks' K and V stay dense next to the local window (order is irrelevant post-RoPE)
    tok = (outliers[:, :, None] * C + torch.arange(C, device=k.device)).reshape(H, -1)  # [H, n_out*C]
    out_k = k.gather(1, tok[..., None].expand(-1, -1, D))
    out_v = v.gather(1, tok[..., None].expand(-1, -1, D))
    u, sv = factorize(k_pre[:, :T], rank, k.dtype)
    return RowState(local_k=torch.cat([k[:, T:], out_k], 1), local_v=torch.cat([v[:, T:], out_v], 1), pos0=pos0,
                    u=u, sv=sv, landmarks=landmarks, landmark_ids=ids, values=v[:, :T],
                    n_select=min(opts.select_chunks, n_chunks - n_out))


def _pad(ts: list[torch.Tensor | None], dims: int, shape_of_empty: tuple, fill=0) -> torch.Tensor:
    """Stack tensors that differ in their trailing sizes, padding each dim to the largest (None -> empty)."""
    ref = next(t for t in ts if t is not None)
    ts = [t if t is not None else ref.new_zeros(shape_of_empty) for t in ts]
    size = [max(t.shape[i] for t in ts) for i in range(dims)]
    out = ref.new_full((len(ts), *size), fill)
    for b, t in enumerate(ts):
        out[(b, *[slice(0, s) for s in t.shape])] = t
    return out


@dataclass
class LayerState:
    """One layer's ShadowKV state for the whole batch, padded to the longest row."""

    local_k: torch.Tensor  # [B, H, L, D] post-RoPE local window + outlier chunks
    local_v: torch.Tensor  # [B, H, L, D]
    pos0: torch.Tensor  # [B] logical position of each row's context row 0
    u: torch.Tensor  # [B, T, r] (zero rows and columns past a row's own context and rank)
    sv: torch.Tensor  # [B, H, r, D]
    landmarks: torch.Tensor  # [B, H, N, W]
    landmark_ids: torch.Tensor  # [B, H, N] chunk ids, a valid prefix then -1
    n_landmarks: torch.Tensor  # [B*H] length of that prefix
    host: HostValues | None  # context values [B*H, T/C, C, D] on the host tier
    slot_ids: torch.Tensor  # [B, H, K] chunk held by each slot: EMPTY, or DISABLED past a row's own budget
    sel_k: torch.Tensor  # [B, H, K*C, D] rebuilt keys of the selected chunks
    sel_v: torch.Tensor  # [B, H, K*C, D] fetched values
    static_valid: torch.Tensor  # [B, L + K*C] which local and slot rows hold a real token
    gen: DecodedKV  # decoded tokens, dense (never dropped: grows)

    @classmethod
    def pack(cls, rows: list[RowState], chunk_size: int) -> LayerState:
        H, _, D = rows[0].local_k.shape
        k0 = rows[0].local_k
        dev = k0.device
        local_len = torch.tensor([r.local_k.shape[1] for r in rows], device=dev)
        sparse = any(r.sparse for r in rows)
        r_max = max((r.u.shape[1] for r in rows if r.sparse), default=0)
        u = _pad([r.u for r in rows], 2, (0, r_max)) if sparse else k0.new_zeros(len(rows), 0, 0)
        sv = _pad([r.sv for r in rows], 3, (H, 0, D)) if sparse else k0.new_zeros(len(rows), H, 0, D)
        lm = _pad([r.landmarks for r in rows], 3, (H, 0, D)) if sparse else k0.new_zeros(len(rows), H, 0, D)
        ids = (_pad([r.landmark_ids for r in rows], 2, (H, 0), fill=-1) if sparse
               else torch.zeros(len(rows), H, 0, dtype=torch.long, device=dev))
        values = _pad([r.values for r in rows], 3, (H, 0, D)) if sparse else None  # [B, H, T, D]
        n_sel = torch.tensor([r.n_select for r in rows], device=dev)
        K = int(n_sel.max())
        slot = torch.arange(K, device=dev)
        slot_ids = torch.where(slot[None, None, :] < n_sel[:, None, None], EMPTY, DISABLED).expand(-1, H, -1)
        B, L = len(rows), int(local_len.max())
        static_valid = torch.cat([torch.arange(L, device=dev)[None] < local_len[:, None],
                                  (slot[None] < n_sel[:, None]).repeat_interleave(chunk_size, 1)], 1)
        return cls(
            local_k=_pad([r.local_k for r in rows], 3, ()), local_v=_pad([r.local_v for r in rows], 3, ()),
            pos0=torch.tensor([r.pos0 for r in rows], device=dev), u=u, sv=sv, landmarks=lm, landmark_ids=ids,
            n_landmarks=(ids >= 0).sum(-1).reshape(-1),
            host=HostValues(values.reshape(B * H, -1, D), chunk_size) if values is not None else None,
            slot_ids=slot_ids.contiguous(), sel_k=k0.new_zeros(B, H, K * chunk_size, D),
            sel_v=k0.new_zeros(B, H, K * chunk_size, D), static_valid=static_valid,
            gen=DecodedKV(B, H, D, k0))

    @property
    def sparse(self) -> bool:
        return self.slot_ids.shape[2] > 0

    def fast_tensors(self) -> list[torch.Tensor]:
        return [self.local_k, self.local_v, self.pos0, self.u, self.sv, self.landmarks, self.landmark_ids,
                self.n_landmarks, self.slot_ids, self.sel_k, self.sel_v, self.static_valid, *self.gen.tensors()]

    def select(self, rows: torch.Tensor) -> None:
        """Keep only batch rows `rows` [B'] (finished sequences leave the batch)."""
        H = self.local_k.shape[1]
        for name in ("local_k", "local_v", "pos0", "u", "sv", "landmarks", "landmark_ids", "slot_ids", "sel_k",
                     "sel_v", "static_valid"):
            setattr(self, name, getattr(self, name)[rows])
        self.gen.select(rows)
        heads = (rows[:, None] * H + torch.arange(H, device=rows.device)).reshape(-1)  # [B'*H]
        self.n_landmarks = self.n_landmarks[heads]
        if self.host is not None:
            self.host.select(heads)
