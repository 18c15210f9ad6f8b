"""A/B of the generated int8 kernels: this checkout's against those of an earlier commit, in one run.

    python benchmarks/ab/bench_int8_ab.py --rev bf3caf9 [--isa avx2] [--ms 1,16] [--shapes 4096x4096]

The code generator of `--rev` (`tessera/kernels/ngemm/` or, before b003367, `tessera/kernels/int8_codegen.py`;
see `common.kernels_at`) generates its default schedule for the ISA in its own tree; the C is compiled
here and bound by this checkout's `library.bind`, so both sides run through the same `int8_linear` /
`int4_linear` host code, and `--rev` must share this checkout's C entry points (ace6995 or later; the
W8A8 kernel choice was a bare int before `W8Kernel` named it, with the same values). Cold: each
side gets its own pool of distinct weights (> 640 MiB; sharing one pool would hand the second side
weights the first just pulled into L3), called in turn, interleaved call by call with the side that
goes first alternating. Outputs are asserted bit-identical. Writes benchmarks/results/int8_ab.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from common import import_bench_gemm, kernels_at

from tessera.kernels.ngemm import ccache, cpu_isa, library
from tessera.kernels.ngemm import gemm as G


def old_backend(rev: str, isa: str) -> library.KernelLibrary:
    """The kernels of `rev`, compiled here: a backend for `int8_linear` / `int4_linear`."""
    k = kernels_at(rev, isa)
    try:
        handle = ccache.build(k.source, k.flags, f"tessera_int8_{isa}_{rev}")
    except ccache.CompileError as e:
        raise SystemExit(f"the kernels of {rev} did not compile for {isa}: {e}") from e
    return library.bind(handle, isa, k.amx_min_m)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rev", required=True, help="git revision whose kernels are the baseline")
    ap.add_argument("--isa", default=cpu_isa.best_backend())
    ap.add_argument("--ms", type=lambda v: [int(m) for m in v.split(",")], default=[1, 16])
    ap.add_argument("--shapes", type=lambda v: [tuple(map(int, s.split("x"))) for s in v.split(",")],
                    default=[(4096, 4096)], help="NxK,...")
    ap.add_argument("--calls", type=int, default=40)
    ap.add_argument("--out", default=str(Path(__file__).parents[1] / "results" / "int8_ab"))
    args = ap.parse_args()
    bench_gemm = import_bench_gemm()
    old = old_backend(args.rev, args.isa)
    lib = bench_gemm.paths(None, args.isa)
    rows = []
    for N, K in args.shapes:
        w = torch.randn(N, K) * 0.02
        for kind, fn in (("W8A8", G.int8_linear), ("W4A8 g128", G.int4_linear)):
            prep, clone, _, size = lib[f"tessera {kind}"]  # bench_gemm's packing and copying of the weight
            pw, nbytes = prep(w), size(w)
            n = max(2, -(-bench_gemm.POOL_BYTES // nbytes))
            pools = {b: [clone(pw) for _ in range(n)] for b in (old, args.isa)}
            for M in args.ms:
                x = torch.randn(M, K)
                assert torch.equal(fn(x, pw, backend=old), fn(x, pw, backend=args.isa)), "kernels disagree"
                ts = {b: [] for b in pools}
                calls = max(4, args.calls if M <= 64 else args.calls // 5)
                for i in range(-2, calls):
                    for b in (list(pools) if i % 2 else list(pools)[::-1]):
                        t = time.perf_counter()
                        fn(x, pools[b][i % n], backend=b)
                        if i >= 0:
                            ts[b].append((time.perf_counter() - t) * 1e3)
                med = {b: statistics.median(v) for b, v in ts.items()}
                row = {"kind": kind, "N": N, "K": K, "M": M, "before_ms": med[old], "after_ms": med[args.isa],
                       "before_min_ms": min(ts[old]), "after_min_ms": min(ts[args.isa]),
                       "speedup": med[old] / med[args.isa], "weight_gbs_after": nbytes / med[args.isa] / 1e6}
                rows.append(row)
                print(json.dumps(row), flush=True)
    info = bench_gemm.machine_info() | {"rev": args.rev, "isa": args.isa}
    out = Path(args.out)
    out.with_suffix(".json").write_text(json.dumps({"machine": info, "rows": rows}, indent=1))
    md = [f"# int8 kernels: this checkout vs {args.rev} ({info['cpu']}, {info['threads']} threads, ISA {args.isa}, "
          f"{info['date_utc']} UTC)", "",
          "Cold (each side its own pool of distinct weights), interleaved; median ms (min). Bit-identical outputs.", "",
          "| kernel | N x K | M | before | after | speedup | weight GB/s after |", "|---|---|---|---|---|---|---|"]
    md += [f"| {r['kind']} | {r['N']}x{r['K']} | {r['M']} | {r['before_ms']:.3f} ({r['before_min_ms']:.3f}) | "
           f"{r['after_ms']:.3f} ({r['after_min_ms']:.3f}) | {r['speedup']:.2f}x | {r['weight_gbs_after']:.1f} |" for r in rows]
    out.with_suffix(".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
