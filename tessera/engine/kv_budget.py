"""The most KV memory a request can hold: what admission under a KV-memory cap reserves.

The dense cache holds a batch as `[B, Hkv, C, D]` per layer, so every row of one cache is padded to the
cache's capacity C; it grows in steps of `GROWTH` slots, the prefill's included, but never past the
cache's limit (`PressTarget.limit_capacity`): a new cohort's cache is limited to its rows' bound before
the prefill (`Cohort`), and a press may lower that limit after it. A press declares its limit in
`after_prefill`; admission learns it *before* the prefill by running the press's `prepare` and
`after_prefill` hooks on a probe that records what the press asks for (a query window, attention sums)
and the capacity it sets. A press whose hooks read more than lengths gets no declared limit, which is
still safe: a row never holds more than its prompt and its new tokens.

Bounds in slots per row (S: prompt, N: max new tokens, P: positions):
  no press limit:  min(S + N, P)     the row's last token; growth stops there
  press limit M:   max(S, M)         the prefill holds at least S, then the press holds the row at M
For R-KV and its baselines M = max(budget, S) + buffer: a row compressed to `budget` grows by `buffer`
decoded tokens before its next compression (a prompt above the budget waits for the first one), so a
press-bounded request reserves exactly what it can hold, whatever its max tokens.
A cache's bytes are rows x max(row slots) x bytes per slot + rows x bytes per row (`cohort_bytes`).
Sparse backends (ShadowKV, Quest) are admitted by the same estimate of their dense equivalent.
"""

from __future__ import annotations

import torch

from tessera.engine.request import KVBound
from tessera.kv.press_target import PressTarget
from tessera.kv.presses import Press


class _Probe(PressTarget):
    """A one-row stand-in that records what a press asks of a fresh cache holding an S-token prompt."""

    def __init__(self, num_layers: int, prompt_len: int):
        self.L, self.len = num_layers, torch.tensor([prompt_len])
        self.window: int | None = None
        self.sums = False
        self.cap: int | None = None

    @property
    def num_layers(self) -> int:
        return self.L

    def lengths(self, layer):
        return self.len

    def request_queries(self, window):
        self.window = window

    def request_attention_sums(self):
        self.sums = True

    def limit_capacity(self, cap):
        self.cap = cap if self.cap is None else min(self.cap, cap)

    def keys(self, layer, rows, n):  # a press that reads tensors at prefill declares no limit
        raise LookupError

    positions = window_queries = attention_sums = keep = keys


def kv_bound(press: Press, layout, dtype: torch.dtype, prompt_len: int, max_new: int, max_pos: int) -> KVBound:
    """The KV a request of this press and length can hold at most (`layout`: the model's `KVLayout`)."""
    probe = _Probe(layout.num_layers, prompt_len)
    try:
        press.prepare(probe)
        press.after_prefill(probe, torch.zeros(1, dtype=torch.long))
    except LookupError:
        probe.cap = None
    longest = min(prompt_len + max_new, max_pos)
    slots = longest if probe.cap is None else max(prompt_len, probe.cap)
    es = torch.empty((), dtype=dtype).element_size()
    L, H, D = layout.num_layers, layout.num_kv_heads, layout.head_dim
    slot_bytes = L * H * (2 * D * es + 4)  # keys + values, int32 logical position
    slot_bytes += L * H * 4 if probe.sums else 0  # fp32 accumulated attention
    row_bytes = L * layout.num_heads * probe.window * D * es if probe.window else 0  # the query ring
    return KVBound(slots, slot_bytes, row_bytes)


def cohort_bytes(bounds: list[KVBound]) -> int:
    """Bytes a cache holding rows of these bounds can reach (rows are padded to the longest)."""
    if not bounds:
        return 0
    slots = max(b.slots for b in bounds)
    return sum(slots * b.slot_bytes + b.row_bytes for b in bounds)
