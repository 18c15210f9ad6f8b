"""Where a ShadowKV decode step spends its time: torch.profiler over a few steps of the one-layer
efficiency benchmark (32 query / 8 KV heads, head dim 128), top ops by self CPU and device time.

    python scripts/gpu_checks/shadowkv_profile.py --device cuda --context 65536      (~30 s on an H200)
    python scripts/gpu_checks/shadowkv_profile.py --device cpu --context 8192
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "benchmarks"))
from bench_shadowkv_efficiency import make_kv, queries, time_steps  # noqa: E402

from tessera.kv.shadowkv import ShadowKVCache, ShadowKVOptions  # noqa: E402
from tessera.kv.shadowkv.state import LayerState, build_row  # noqa: E402


@torch.inference_mode()
def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--context", type=int, default=65536)
    ap.add_argument("--steps", type=int, default=8)
    args = ap.parse_args()
    H, Hq, D, T, dev = 8, 32, 128, args.context, args.device
    k_pre, k, v, rope = make_kv(T, H, D, dev)
    opts = ShadowKVOptions()
    skv = ShadowKVCache(1, H, D, rope, opts, dev)
    skv.layers[0] = LayerState.pack([build_row(k_pre, k, v, 0, opts, skv.rank)], opts.chunk_size)
    qs = queries(args.steps + 4, Hq, D, dev, 0.3)
    time_steps(skv, qs[:4], H, D, T, dev)  # warm-up: compile the kernels, fill the slots
    acts = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if dev == "cuda" else [])
    with torch.profiler.profile(activities=acts) as prof:
        lat = time_steps(skv, qs[4:], H, D, T + 4, dev)
    print(f"{dev} T={T}: median step {1e3 * sorted(lat)[len(lat) // 2]:.3f} ms, hit rate {skv.hit_rate():.3f}")
    for key in ("self_cpu_time_total",) + (("self_device_time_total",) if dev == "cuda" else ()):
        print(prof.key_averages().table(sort_by=key, row_limit=18, max_name_column_width=60))
    return 0


if __name__ == "__main__":
    sys.exit(main())
