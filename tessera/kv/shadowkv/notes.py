"""What ShadowKV did that its options do not say, for the CLI and for `GenerationStats.notes`: prompts too
short for any sparse chunk run dense, and a sparse budget that covers a prompt's whole context selects all
of it while the fast tier also holds the low-rank keys and landmarks (more bytes than the dense cache:
ShadowKV pays off on long prompts)."""

from __future__ import annotations

from tessera.kv.shadowkv.options import ShadowKVOptions


def shadowkv_notes(options: dict, prompt_lens: list[int], peak_kv_bytes: int | None = None,
                   dense_kv_bytes: int = 0) -> list[str]:
    o = ShadowKVOptions(**options)
    dense_below = (o.local_chunks + 1) * o.chunk_size  # no context chunk outside the local window
    covered = o.sparse_budget + (o.outlier_chunks + o.local_chunks) * o.chunk_size
    notes = []
    short = [n for n in prompt_lens if n < dense_below]
    if short:
        notes.append(f"shadowkv: {len(short)} of {len(prompt_lens)} prompts are shorter than the local window plus "
                     f"one chunk ({dense_below} tokens): they ran dense")
    full = [n for n in prompt_lens if dense_below <= n <= covered]
    if full:
        measured = (f" (fast tier {peak_kv_bytes / 2**20:.2f} MiB, dense cache {dense_kv_bytes / 2**20:.2f} MiB)"
                    if peak_kv_bytes is not None and peak_kv_bytes > dense_kv_bytes else "")
        notes.append(f"shadowkv: the sparse budget ({o.sparse_budget} tokens + {o.outlier_chunks} outlier and "
                     f"{o.local_chunks} local chunks) covers the whole prompt of {len(full)} of {len(prompt_lens)} "
                     f"prompts: nothing is left out, and the low-rank keys and landmarks come on top{measured}; "
                     "use a smaller sparse budget or a longer prompt")
    return notes
