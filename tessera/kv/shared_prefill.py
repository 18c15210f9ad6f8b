"""One prefill for several KV backends, so that methods which all prefill densely (dense, ShadowKV, Quest)
can be compared on the same long prompt without paying its O(S^2) attention once per method.

The dense child attends (and keeps its K/V); every other child `ingest`s the same keys and values and
builds its own state. Afterwards each child is an independent cache, ready to decode on its own.
"""

from __future__ import annotations

from tessera.kv.backend import KVCache, SparseDecodeCache


class SharedPrefill(KVCache):
    """Prefill fan-out: the dense cache attends (and keeps its K/V), every other backend ingests the same
    keys and values. Afterwards each child is an independent, ready-to-decode cache."""

    def __init__(self, dense: KVCache, others: list[SparseDecodeCache]):
        self.dense, self.others = dense, others
        self.wants_pre_rope_keys = any(c.wants_pre_rope_keys for c in others)

    def observe_pre_rope_keys(self, layer, k_pre, ctx):
        for c in self.others:
            if c.wants_pre_rope_keys:
                c.observe_pre_rope_keys(layer, k_pre, ctx)

    def attend(self, layer, q, k, v, ctx):
        if not ctx.is_prefill:
            raise RuntimeError("SharedPrefill only prefills; decode each child cache on its own")
        for c in self.others:
            c.ingest(layer, k, v, ctx)
        return self.dense.attend(layer, q, k, v, ctx)
