"""What ShadowKV keeps for one (layer, sequence) after prefill, and how it is built.

Fast tier: U [T, r] (shared by heads), SV [H, r, D], landmarks + chunk ids, the dense local window and
outlier chunks (post-RoPE K and V), the sparse slots (rebuilt K, fetched V) and the decoded tokens.
Host tier: the values of every context chunk. A prompt with no chunk outside the local window keeps
everything in the local window: that is the dense fallback for short prompts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from tessera.kv.shadowkv.host import HostValues
from tessera.kv.shadowkv.lowrank import factorize
from tessera.kv.shadowkv.options import ShadowKVOptions
from tessera.kv.shadowkv.selection import landmarks_and_outliers


@dataclass
class RowState:
    local_k: torch.Tensor  # [H, L, D] post-RoPE: local window, then outlier chunks (both static)
    local_v: torch.Tensor  # [H, L, D]
    pos0: int = 0  # logical position of context row 0
    u: torch.Tensor | None = None  # [T, r] low-rank pre-RoPE key factor (None: dense fallback)
    sv: torch.Tensor | None = None  # [H, r, D]
    landmarks: torch.Tensor | None = None  # [H, n, D]
    landmark_ids: torch.Tensor | None = None  # [H, n] int32 chunk ids
    host: HostValues | None = None
    slot_ids: torch.Tensor | None = None  # [H, k] chunk id per sparse slot, -1 empty
    sel_k: torch.Tensor | None = None  # [H, k*C, D] rebuilt keys of the selected chunks
    sel_v: torch.Tensor | None = None  # [H, k*C, D]
    gen_k: torch.Tensor = field(default=None)  # [H, cap, D] decoded tokens (never dropped: grows)
    gen_v: torch.Tensor = field(default=None)
    gen_len: int = 0

    @property
    def sparse(self) -> bool:
        return self.u is not None

    def fast_tensors(self):
        return [t for t in (self.local_k, self.local_v, self.u, self.sv, self.landmarks, self.landmark_ids,
                            self.slot_ids, self.sel_k, self.sel_v, self.gen_k, self.gen_v) if t is not None]

    def append(self, k: torch.Tensor, v: torch.Tensor, growth: int = 64) -> None:
        """k, v [H, 1, D] post-RoPE decoded token."""
        if self.gen_len == self.gen_k.shape[1]:  # grow in steps: amortised copies, nothing dropped
            pad = self.gen_k.new_zeros(self.gen_k.shape[0], growth, self.gen_k.shape[2])
            self.gen_k, self.gen_v = torch.cat([self.gen_k, pad], 1), torch.cat([self.gen_v, pad], 1)
        self.gen_k[:, self.gen_len] = k[:, 0]
        self.gen_v[:, self.gen_len] = v[:, 0]
        self.gen_len += 1


def build_row(k_pre: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pos0: int, opts: ShadowKVOptions,
              rank: int) -> RowState:
    """One sequence's prompt: k_pre, k (post-RoPE), v [H, n, D] -> its ShadowKV state."""
    H, n, D = k.shape
    C = opts.chunk_size
    n_chunks = n // C - opts.local_chunks  # context chunks; the rest (local window + remainder) stays dense
    empty = k.new_zeros(H, 0, D)
    if n_chunks < 1:  # too short for the scheme: dense
        return RowState(local_k=k.clone(), local_v=v.clone(), pos0=pos0, gen_k=empty, gen_v=empty)
    T = n_chunks * C
    n_out = min(opts.outlier_chunks, n_chunks - 1)  # leave at least one chunk to select
    n_sel = min(opts.select_chunks, n_chunks - n_out)
    landmarks, ids, outliers = landmarks_and_outliers(k[:, :T], C, n_out)
    # outlier chunks' K and V stay dense next to the local window (order is irrelevant post-RoPE)
    tok = (outliers[:, :, None] * C + torch.arange(C, device=k.device)).reshape(H, -1)  # [H, n_out*C]
    out_k = k.gather(1, tok[..., None].expand(-1, -1, D))
    out_v = v.gather(1, tok[..., None].expand(-1, -1, D))
    u, sv = factorize(k_pre[:, :T], rank, k.dtype)
    return RowState(
        local_k=torch.cat([k[:, T:], out_k], 1), local_v=torch.cat([v[:, T:], out_v], 1), pos0=pos0,
        u=u, sv=sv, landmarks=landmarks, landmark_ids=ids.to(torch.int32), host=HostValues(v[:, :T], C),
        slot_ids=torch.full((H, n_sel), -1, dtype=torch.long, device=k.device),
        sel_k=k.new_zeros(H, n_sel * C, D), sel_v=k.new_zeros(H, n_sel * C, D), gen_k=empty, gen_v=empty)
