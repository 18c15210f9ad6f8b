"""Adaptive assignment for COMET's fused layers: how many programs communicate (`n_c`) and how many column
blocks layer1 computes and sends one after another (`n_blocks`), chosen per shape by profiling and cached on
disk, like an autotuner (COMET, arXiv 2502.19811 §3.2.2: the best number of communication thread blocks
moves with the token count, 18 -> 26 of 132 SMs as M grows 4096 -> 16384, and is found offline over
precompiled variants; bytedance/flux keeps the same kind of table for `gather_rs_ctas`).

A key is (tokens, experts, top-k, world size, hidden, ffn, device kind); `tokens` is the global token
count of the call (every rank sees the same count matrix after the dispatch barrier, so every rank picks the
same configuration), rounded up to a power of two. Lookup order: the on-disk cache (written by `record`,
i.e. by `scripts/tune_comet.py`), the table shipped beside this file (`comet_defaults.json`), the nearest
token count for the same model shape in either, then a fixed rule. Nothing here launches a kernel: the
profiling loop takes the function to time, so the rank processes stay in the script.

    python -m tessera.kernels.moe.comet_tune            # print the cached and shipped tables
    python scripts/tune_comet.py --world 2 --tokens 32  # profile on this machine, record, print the top 5
"""

from __future__ import annotations

import json
import os
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

DEFAULTS = Path(__file__).resolve().with_name("comet_defaults.json")


@dataclass(frozen=True)
class CometConfig:
    n_c: int  # programs that communicate in each fused launch (layer0: senders; layer1: per column block)
    n_blocks: int  # layer1: column blocks, each reduced and sent home while the next one is computed; blocks are
    # whole column tiles, so the count used is cdiv(n_tiles, cdiv(n_tiles, n_blocks)) (e.g. 4 tiles, 3 asked: 2)

    def __post_init__(self):
        if self.n_c < 1 or self.n_blocks < 1:
            raise ValueError(f"comet config: n_c and n_blocks must be >= 1, got {self}")


@dataclass(frozen=True)
class TuneKey:
    tokens: int  # global tokens of the call, rounded up to a power of two
    experts: int
    top_k: int
    world: int
    hidden: int
    ffn: int
    device: str = "cpu"  # "cpu" (the interpreter) or the GPU's name

    def name(self) -> str:
        return (f"{self.device}|T{self.tokens}|E{self.experts}|k{self.top_k}|W{self.world}|H{self.hidden}"
                f"|I{self.ffn}")


def bucket(tokens: int) -> int:
    """Round a token count up to a power of two (the table's granularity)."""
    return 1 << max(0, int(tokens) - 1).bit_length()


def cache_path() -> Path:
    d = os.environ.get("TESSERA_TUNE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "tessera")
    return Path(d) / "comet_tune.json"


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text()).get("entries", {})
    except (OSError, ValueError):
        return {}


def fallback(key: TuneKey, max_blocks: int) -> CometConfig:
    """No profile for this shape: one sender per remote peer (at most 4), flux's Triton split of N into 4."""
    return CometConfig(max(1, min(key.world - 1, 4)), max(1, min(4, max_blocks)))


def select(key: TuneKey, nc_max: int, max_blocks: int) -> tuple[CometConfig, str]:
    """(configuration, where it came from) for `key`, clipped to what the context's buffers hold."""
    tables = (("cache", _read(cache_path())), ("shipped", _read(DEFAULTS)))
    found = None
    for src, table in tables:
        if key.name() in table:
            found = (table[key.name()], src)
            break
    if found is None:  # the nearest token count profiled for this model shape
        shape = key.name().split("|", 2)[2]
        near = [(abs(int(k.split("|")[1][1:]).bit_length() - key.tokens.bit_length()), src, v)
                for src, table in tables for k, v in table.items()
                if k.split("|", 2)[2] == shape and k.split("|")[0] == key.device]
        if near:
            _, src, v = min(near, key=lambda t: t[0])
            found = (v, f"{src}, nearest token count")
    if found is None:
        return fallback(key, max_blocks), "rule"
    entry, src = found
    return CometConfig(max(1, min(entry["n_c"], nc_max)), max(1, min(entry["n_blocks"], max_blocks))), src


def candidates(world: int, nc_max: int, max_blocks: int) -> list[CometConfig]:
    """The search space: n_c in 1, 2, 4, ... (and W - 1), column blocks in 1, 2, 4, ..."""
    ncs = sorted({n for n in (1, 2, 4, 8, 16, 32, world - 1) if 1 <= n <= nc_max})
    nbs = sorted({n for n in (1, 2, 4, 8, 16) if n <= max_blocks})
    return [CometConfig(c, b) for c in ncs for b in nbs]


def profile(fn, configs: list[CometConfig], reps: int = 5) -> list[dict]:
    """Time `fn(config)` (after one warm-up call) `reps` times per configuration; fastest median first.
    `fn` may return its own per-repetition seconds (e.g. the slowest rank's), else it is timed here."""
    rows = []
    for cfg in configs:
        fn(cfg)
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            got = fn(cfg)
            times.append(float(got) if isinstance(got, (int, float)) else time.perf_counter() - t0)
        rows.append(summary(cfg, times))
    return sorted(rows, key=lambda r: r["median_s"])


def summary(cfg: CometConfig, times: list[float]) -> dict:
    q = statistics.quantiles(times, n=4) if len(times) >= 4 else [min(times), 0, max(times)]
    return {**asdict(cfg), "median_s": statistics.median(times), "q1_s": q[0], "q3_s": q[2], "reps": len(times)}


def record(key: TuneKey, ranked: list[dict], path: Path | None = None) -> Path:
    """Store the fastest configuration of a profile (`ranked`, fastest first) under `key` on disk."""
    path = path or cache_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        doc = {}
    entries = doc.setdefault("entries", {})
    best = ranked[0]
    entries[key.name()] = {"n_c": best["n_c"], "n_blocks": best["n_blocks"], "median_s": best["median_s"],
                           "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
    tmp.replace(path)  # atomic: a reader never sees half a file
    return path


def format_top(key: TuneKey, ranked: list[dict], top: int = 5) -> str:
    base = ranked[0]["median_s"]
    lines = [f"COMET configurations for {key.name()} (fastest first, median of {ranked[0]['reps']}):",
             "  n_c  n_blocks   median ms   [q1, q3] ms      vs best"]
    for r in ranked[:top]:
        lines.append(f"  {r['n_c']:>3}  {r['n_blocks']:>8}   {r['median_s'] * 1e3:9.2f}   "
                     f"[{r['q1_s'] * 1e3:.2f}, {r['q3_s'] * 1e3:.2f}]   {r['median_s'] / base:5.2f}x")
    return "\n".join(lines)


def main() -> None:
    for name, path in (("cache", cache_path()), ("shipped", DEFAULTS)):
        print(f"{name}: {path}")
        for k, v in sorted(_read(path).items()):
            print(f"  {k}: n_c={v['n_c']} n_blocks={v['n_blocks']}"
                  + (f" ({v['median_s'] * 1e3:.1f} ms)" if "median_s" in v else ""))


if __name__ == "__main__":
    main()
