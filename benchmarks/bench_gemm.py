"""Does Tessera's generated W8A8 / W4A8 CPU GEMM beat the prepacked int8 libraries on LLM shapes?

    python benchmarks/bench_gemm.py [--quick] [--mkl /path/to/libmkl_rt.so.2]

Every figure is measured in the same run on the same machine:
- baselines: fp32 `torch.mm` (MKL sgemm), `torch._int_mm` (int8 in, int32 out, no quantization),
  torch's prepacked dynamic int8 linear (`quantized::linear_dynamic`, engines fbgemm and x86; fp32
  in/out like ours), and MKL's pack API (`cblas_gemm_s8u8s32_pack/_compute`, u8 in, int32 out, via
  ctypes; only with --mkl, pip `mkl` is not a Tessera dependency).
- ours: `int8_linear` (W8A8) and `int4_linear` (W4A8, group 128), fp32 in -> fp32 out, i.e. they
  *include* activation quantization and the dequant epilogue that `_int_mm` and MKL leave out.
- cold: each call uses the next weight of a pool of distinct copies larger than 2x the L3
  (decode streams every weight once per token); hot: the same weight every call (L2/L3-resident).
- rooflines use the DRAM read bandwidth and the `vpdpbusd` peak measured by this script.
Writes benchmarks/results/gemm.json, gemm.md and gemm.png (or `--out PREFIX`); `--replot-from PREFIX.json`
redraws the PNG from a result file alone (seconds, nothing rerun):

    python benchmarks/bench_gemm.py --replot-from benchmarks/results/gemm_epyc_avx2_final.json
"""

from __future__ import annotations

import argparse
import ctypes
import functools
import json
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path

import torch

from tessera.kernels.ngemm import ccache, cpu_isa
from tessera.kernels.ngemm import gemm as G
from tessera.quant.weights import quantize_weight_int4, quantize_weight_int8

LLAMA8B = {"q,o 4096x4096": (4096, 4096), "k,v 1024x4096": (1024, 4096),
           "gate,up 14336x4096": (14336, 4096), "down 4096x14336": (4096, 14336)}
EMBEDDED = {"emb q,o 256x256": (256, 256), "emb gate,up 768x256": (768, 256), "emb down 256x768": (256, 768)}
POOL_BYTES = 640 << 20  # > 2x the largest L3 we ran on (300 MiB, the Xeon VM; the EPYC VM has 8 MiB)

_PEAK_C = r"""
#include <immintrin.h>
#include <stdint.h>
double tq_int8_peak(long iters, int x, int nt) {  /* CHAINS independent int8 multiply-add chains per core */
  double ops = 0;
  #pragma omp parallel num_threads(nt) reduction(+:ops)
  {
    VEC a = SET1(x), b = SET1(x + 1), c[CHAINS];
    for (int j = 0; j < CHAINS; j++) c[j] = SET1(j);
    for (long i = 0; i < iters; i++)
      for (int j = 0; j < CHAINS; j++) c[j] = MAC(c[j], a, b);
    VEC s = c[0];
    for (int j = 1; j < CHAINS; j++) s = ADD(s, c[j]);
    int32_t out[sizeof(VEC) / 4];
    memcpy(out, &s, sizeof s);
    ops += (double)iters * CHAINS * (sizeof(VEC) / 4) * 4 * 2 + 0.0 * out[0];  /* 4 u8*s8 products per lane */
  }
  return ops;
}
"""
# The multiply-add each kernel ISA builds on (tessera/kernels/ngemm/isa_ops.py): AVX2 has no vpdpbusd, its
# dot4 is vpmaddubsw + vpmaddwd + vpaddd (W8A8's sign-trick kernels add a vpsignb, the bit-7 split doubles it).
PEAK_PROBES = {
    "avx512vnni": ("vpdpbusd zmm", ("-mavx512f", "-mavx512bw", "-mavx512vnni"),
                   "#define CHAINS 12\n#define VEC __m512i\n#define SET1 _mm512_set1_epi32\n#define ADD _mm512_add_epi32\n"
                   "#define MAC _mm512_dpbusd_epi32\n"),
    "avxvnni": ("vpdpbusd ymm (AVX-VNNI)", ("-mavx2", "-mavxvnni"),
                "#define CHAINS 12\n#define VEC __m256i\n#define SET1 _mm256_set1_epi32\n#define ADD _mm256_add_epi32\n"
                "#define MAC _mm256_dpbusd_avx_epi32\n"),
    "avx2": ("vpmaddubsw+vpmaddwd+vpaddd ymm", ("-mavx2",),
             "#define VEC __m256i\n#define SET1 _mm256_set1_epi32\n#define ADD _mm256_add_epi32\n"
             # the accumulator is the unsigned operand: with (a, b) alone gcc hoists the multiplies out of the
             # loop and the probe timed vpaddd (it read 240 GOP/s on a Zen 1 EPYC whose kernels top out at ~80)
             # and 10 chains, not 12: 12 spill on 16 ymm registers (10 read 72-74 GOP/s there, 12 read 67-70)
             "#define CHAINS 10\n#define MAC(c, a, b) _mm256_add_epi32(c, _mm256_madd_epi16(_mm256_maddubs_epi16(c, b), "
             "_mm256_set1_epi16(1)))\n"),
}

_READ_C = r"""
#include <stdint.h>
int64_t tq_read(const int64_t* p, long n, int nt) {  /* streaming read of n int64 */
  int64_t s = 0;
  #pragma omp parallel for num_threads(nt) reduction(^:s) schedule(static)
  for (long i = 0; i < n; i++) s ^= p[i];
  return s;
}
"""


def measure_machine(nt: int) -> dict:
    """The int8 multiply-add peak of the best vector ISA here (the AMX kernels are measured against the
    AVX512-VNNI peak, as before) and the DRAM read bandwidth, both with `nt` threads."""
    isa = next((i for i in PEAK_PROBES if i in cpu_isa.supported_isas()), None)
    peaks, what = [], "none (no x86 int8 SIMD)"
    if isa is not None:
        what, flags, defs = PEAK_PROBES[isa]
        peak = ccache.build("#include <string.h>\n" + defs + _PEAK_C, flags, f"bench_peak_{isa}")
        peak.tq_int8_peak.restype = ctypes.c_double
        peak.tq_int8_peak.argtypes = [ctypes.c_long, ctypes.c_int, ctypes.c_int]
        for _ in range(5):
            t = time.perf_counter()
            ops = peak.tq_int8_peak(20_000_000, 1, nt)
            peaks.append(ops / (time.perf_counter() - t) / 1e9)
    read = ccache.build(_READ_C, (), "bench_read")
    read.tq_read.restype, read.tq_read.argtypes = ctypes.c_int64, [ctypes.c_void_p, ctypes.c_long, ctypes.c_int]
    buf = torch.ones(1 << 27, dtype=torch.int64)  # 1 GiB
    bws = []
    for _ in range(5):
        t = time.perf_counter()
        read.tq_read(buf.data_ptr(), buf.numel(), nt)
        bws.append(buf.numel() * 8 / (time.perf_counter() - t) / 1e9)
    return {"int8_peak_gops": max(peaks) if peaks else float("nan"),
            "int8_peak_probe": what,
            "dram_read_gbs": max(bws)}


class MklPack:
    """MKL `cblas_gemm_s8u8s32_pack` + `_compute` (A = u8 activations, B = s8 weights), via ctypes."""

    def __init__(self, path: str, nt: int):
        os.environ.setdefault("MKL_THREADING_LAYER", "GNU")  # share torch's libgomp, no libiomp5 needed
        self.lib = ctypes.CDLL(path)
        self.lib.MKL_Set_Num_Threads(nt)
        self.lib.cblas_gemm_s8u8s32_pack_get_size.restype = ctypes.c_size_t

    def pack(self, w_q: torch.Tensor):  # w_q [N, K] int8 -> packed B for op(B) = w_q^T
        N, K = w_q.shape
        size = self.lib.cblas_gemm_s8u8s32_pack_get_size(162, 1, N, K)  # CblasBMatrix, M=1 (size ignores M)
        buf = torch.empty(size, dtype=torch.uint8)
        self.lib.cblas_gemm_s8u8s32_pack(101, 162, 112, 1, N, K, ctypes.c_void_p(w_q.data_ptr()), K,
                                         ctypes.c_void_p(buf.data_ptr()))  # RowMajor, B, Trans
        return buf, N, K, w_q  # w_q kept: the packed format is opaque, copies must be re-packed

    def compute(self, a_u8: torch.Tensor, packed, c: torch.Tensor):  # a [M, K] u8 -> c [M, N] int32
        buf, N, K, _ = packed
        M, co = a_u8.shape[0], ctypes.c_int32(0)
        self.lib.cblas_gemm_s8u8s32_compute(
            101, 111, 151, 173, M, N, K, ctypes.c_float(1.0), ctypes.c_void_p(a_u8.data_ptr()), K,
            ctypes.c_int8(0), ctypes.c_void_p(buf.data_ptr()), K, ctypes.c_int8(0), ctypes.c_float(0.0),
            ctypes.c_void_p(c.data_ptr()), N, ctypes.byref(co))  # NoTrans, CblasPacked (151), CblasFixOffset (173)


def paths(mkl: MklPack | None, backend: str):
    """name -> (prepare(w fp32 [N, K]) -> state, copy(state) -> state, make_call(state, x) -> fn, bytes)."""
    def q8(w):
        return quantize_weight_int8(w)

    def qlinear(engine):
        def prep(w):
            torch.backends.quantized.engine = engine
            q, s = q8(w)
            qw = torch._make_per_channel_quantized_tensor(q, s.double(), torch.zeros(len(s), dtype=torch.long), 0)
            return torch.ops.quantized.linear_prepack(qw, None)

        def copy(st):
            torch.backends.quantized.engine = engine
            return torch.ops.quantized.linear_prepack(torch.ops.quantized.linear_unpack(st)[0], None)

        def call(st, x):
            torch.backends.quantized.engine = engine
            return lambda: torch.ops.quantized.linear_dynamic(x, st, True)
        return prep, copy, call, lambda w: w.numel()

    def clone8(pw):
        return G.PackedInt8Weight(pw.data.clone(), pw.scale.clone(), pw.colsum.clone(), None, pw.n, pw.k)

    def clone4(pw):
        return G.PackedInt4Weight(pw.data.clone(), pw.scale.clone(), None, pw.n, pw.k, pw.group)

    out = {
        "fp32 torch.mm": (lambda w: w.t().contiguous(), torch.clone,
                          lambda st, x: (lambda: torch.mm(x, st)), lambda w: w.numel() * 4),
        "torch._int_mm (int only)": (
            lambda w: q8(w)[0].t().contiguous(), torch.clone,
            lambda st, x: functools.partial(torch._int_mm, quantize_weight_int8(x)[0], st), lambda w: w.numel()),
        "qlinear_dynamic fbgemm": qlinear("fbgemm"),
        "qlinear_dynamic x86": qlinear("x86"),
    }
    if mkl is not None:
        def mkl_call(st, x):
            a = (quantize_weight_int8(x)[0].to(torch.int16) + 128).to(torch.uint8)
            c = torch.empty(x.shape[0], st[1], dtype=torch.int32)
            return lambda: mkl.compute(a, st, c)
        out["MKL pack (int only)"] = (lambda w: mkl.pack(q8(w)[0]),
                                      lambda st: mkl.pack(st[3]), mkl_call, lambda w: w.numel())
    out["tessera W8A8"] = (lambda w: G.pack_int8(*q8(w)), clone8,
                           lambda st, x: (lambda: G.int8_linear(x, st, backend=backend)), lambda w: w.numel())
    out["tessera W4A8 g128"] = (lambda w: G.pack_int4(*quantize_weight_int4(w, 128), 128), clone4,
                                lambda st, x: (lambda: G.int4_linear(x, st, backend=backend)),
                                lambda w: w.numel() // 2)
    return out


def summarize(ts: list[float]) -> dict:
    ts = sorted(ts)
    q = statistics.quantiles(ts, n=10) if len(ts) >= 5 else [ts[0]] * 9
    return {"median_ms": statistics.median(ts), "min_ms": ts[0], "p10_ms": q[0], "p90_ms": q[-1], "n": len(ts)}


def bench_shape(name, N, K, Ms, cold_Ms, mkl, backend, reps, interleave=False, skip=()):
    """Time every path on one (N, K). interleave: build all pools first, then alternate the paths
    call by call in an order rotated every round, so that load from other jobs and the after-effects of
    one library's call on the next hit every path alike (costs the memory of all pools)."""
    rows = []
    w = torch.randn(N, K) * 0.02
    todo = [(p, f) for p, f in paths(mkl, backend).items() if p not in skip]
    groups = [todo] if interleave else [[t] for t in todo]
    for group in groups:
        pools = {}
        for path, (prep, copy, _call, nbytes) in group:
            st0 = prep(w)
            pool_n = max(2, -(-POOL_BYTES // nbytes(w)))
            pools[path] = [st0] + [copy(st0) for _ in range(pool_n - 1)] if cold_Ms else [st0]
        for M in Ms:
            x = torch.randn(M, K)
            r = max(3, reps if M <= 64 else reps // 6)
            for mode in ("hot", "cold"):
                if mode == "cold" and M not in cold_Ms:
                    continue
                fns = {p: [c(st, x) for st in (pools[p] if mode == "cold" else pools[p][:1])]
                       for p, (_, _, c, _) in group}
                for fs in fns.values():  # warm-up
                    fs[0]()
                    fs[1 % len(fs)]()
                ts = {p: [] for p in fns}
                order = list(fns)
                for i in range(r):
                    # rotate who goes first: a call right after MKL pack's ran ~0.3 ms slower on the EPYC
                    # (any library: it writes back the dirty lines MKL leaves in L3), so a fixed order
                    # charged that to whoever followed MKL
                    for p in order[i % len(order):] + order[:i % len(order)]:
                        t = time.perf_counter()
                        fns[p][(i + 2) % len(fns[p])]()
                        ts[p].append((time.perf_counter() - t) * 1e3)
                for path, (_, _, _, nbytes) in group:
                    s = summarize(ts[path])
                    s.update(shape=name, N=N, K=K, M=M, path=path, mode=mode, weight_bytes=nbytes(w),
                             pool=len(fns[path]), gops=2 * M * N * K / s["median_ms"] / 1e6)
                    rows.append(s)
                    print(f"{name:22s} M={M:5d} {mode:4s} {path:26s} {s['median_ms']:9.3f} ms (min {s['min_ms']:.3f}) "
                          f"[{s['p10_ms']:.3f}-{s['p90_ms']:.3f}] {s['gops']:7.1f} GOP/s", flush=True)
        del pools
    return rows


def machine_info() -> dict:
    model = next((ln.split(":", 1)[1].strip() for ln in subprocess.run(
        ["lscpu"], capture_output=True, text=True, check=False).stdout.splitlines()
        if ln.startswith("Model name")), platform.processor())
    return {"cpu": model, "cores": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "isa": cpu_isa.best_backend(), "loadavg_at_start": os.getloadavg(),
            "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime())}


LIBS_PREPACKED = ("qlinear_dynamic fbgemm", "qlinear_dynamic x86", "MKL pack (int only)")
LIBS_INT8 = (*LIBS_PREPACKED, "torch._int_mm (int only)")


def analyze(rows: list[dict], info: dict) -> list[dict]:
    """Per (shape, M, mode): our times, the best library paths, ratios and roofline fractions."""
    out = []
    keys = sorted({(r["shape"], r["M"], r["mode"]) for r in rows}, key=lambda k: (k[0], k[2], k[1]))
    for shape, M, mode in keys:
        by = {r["path"]: r for r in rows if (r["shape"], r["M"], r["mode"]) == (shape, M, mode)}
        w8, w4 = by["tessera W8A8"], by["tessera W4A8 g128"]
        pre = min((by[p] for p in LIBS_PREPACKED if p in by), key=lambda r: r["median_ms"])
        i8 = min((by[p] for p in LIBS_INT8 if p in by), key=lambda r: r["median_ms"])
        s = {"shape": shape, "M": M, "mode": mode, "w8a8_ms": w8["median_ms"], "w4a8_ms": w4["median_ms"],
             "best_prepacked": pre["path"], "best_prepacked_ms": pre["median_ms"],
             "w8a8_speedup_vs_best_prepacked": pre["median_ms"] / w8["median_ms"],
             "best_int8_lib": i8["path"], "w4a8_speedup_vs_best_int8_lib": i8["median_ms"] / w4["median_ms"],
             "w8a8_speedup_vs_fp32": by["fp32 torch.mm"]["median_ms"] / w8["median_ms"],
             "w8a8_int8_peak_frac": w8["gops"] / info["int8_peak_gops"]}
        # Other jobs on a shared 2-core VM inflate medians; the minimum is the contention-robust figure.
        pre_min = min(by[p]["min_ms"] for p in LIBS_PREPACKED if p in by)
        i8_min = min(by[p]["min_ms"] for p in LIBS_INT8 if p in by)
        s["w8a8_speedup_vs_best_prepacked_min"] = pre_min / w8["min_ms"]
        s["w4a8_speedup_vs_best_int8_lib_min"] = i8_min / w4["min_ms"]
        s["w8a8_int8_peak_frac_min"] = 2 * M * w8["N"] * w8["K"] / w8["min_ms"] / 1e6 / info["int8_peak_gops"]
        for tag, r in (("w8a8", w8), ("w4a8", w4)):
            s[f"{tag}_dram_roofline_frac_min"] = r["weight_bytes"] / (info["dram_read_gbs"] * 1e6) / r["min_ms"]
            s[f"{tag}_dram_roofline_frac"] = r["weight_bytes"] / (info["dram_read_gbs"] * 1e6) / r["median_ms"]
        out.append(s)
    return out


COLS = ("fp32 torch.mm", "torch._int_mm (int only)", "qlinear_dynamic fbgemm", "qlinear_dynamic x86",
        "MKL pack (int only)", "tessera W8A8", "tessera W4A8 g128")


def markdown(rows, summary, info, quick: bool) -> str:
    cols = [c for c in COLS if any(r["path"] == c for r in rows)]
    lines = [f"# int8 GEMM benchmark{' (--quick)' if quick else ''}", "",
             (f"Machine: {info['cpu']}, {info['cores']} cores, {info['threads']} threads, torch {info['torch']}, "
             f"kernel ISA {info['isa']}, {info['date_utc']} UTC, load average at start {info['loadavg_at_start']}, "
              f"at end {info.get('loadavg_at_end')}."),
             (f"Measured in this run: int8 peak {info['int8_peak_gops']:.0f} GOP/s ({info['int8_peak_probe']}), "
             f"DRAM read {info['dram_read_gbs']:.1f} GB/s. Cold = pool of distinct weights > 640 MiB "
             "(more than 2x the L3 of the machines we ran on: 300 MiB Xeon, 8 MiB EPYC) cycled; hot = one weight reused. Median ms (min) [p10-p90]; ratios on medians "
              "(on minima)."), "",
             ("`(int only)` paths take pre-quantized int8/u8 input and return int32: they skip the activation "
             "quantization and dequant epilogue that fbgemm/x86 `linear_dynamic` and Tessera's kernels "
             "(fp32 in, fp32 out) include."), ""]
    # the 1-minute load at the end includes this benchmark's own threads: only what is above them is others'
    busy = max(info["loadavg_at_start"][0], (info.get("loadavg_at_end") or [0])[0] - info["threads"])
    if busy > 0.5 * info["cores"]:
        lines += [(f"**WARNING: load average {busy:.1f} on {info['cores']} cores: other jobs shared the CPU during "
                  "this run (see the measured peak and bandwidth above); timings and ratios are not "
                  "representative of this machine.**"), ""]
    lines += ["| shape | M | mode | " + " | ".join(cols) + " | W8A8 vs best prepacked | W4A8 vs best int8 |",
              "|" + "---|" * (len(cols) + 5)]
    for s in summary:
        cells = []
        for c in cols:
            r = next((r for r in rows if (r["shape"], r["M"], r["mode"], r["path"]) == (s["shape"], s["M"],
                                                                                       s["mode"], c)), None)
            cells.append("-" if r is None else f"{r['median_ms']:.3f} ({r['min_ms']:.3f}) [{r['p10_ms']:.3f}-{r['p90_ms']:.3f}]")
        lines.append(f"| {s['shape']} | {s['M']} | {s['mode']} | " + " | ".join(cells) +
                     f" | {s['w8a8_speedup_vs_best_prepacked']:.2f}x ({s['w8a8_speedup_vs_best_prepacked_min']:.2f}x)"
                     f" vs {s['best_prepacked']} |"
                     f" {s['w4a8_speedup_vs_best_int8_lib']:.2f}x ({s['w4a8_speedup_vs_best_int8_lib_min']:.2f}x) |")
    lines += ["", "## Roofline", "", ("| shape | M | mode | W8A8 GOP/s | % int8 peak | W8A8 % DRAM roofline |"
              " W4A8 % DRAM roofline | same, on minima (peak, W8A8 DRAM, W4A8 DRAM) |"), "|---|---|---|---|---|---|---|---|"]
    for s in summary:
        if s["M"] == 1 and s["mode"] == "cold" or s["M"] >= 256:
            gops = 2 * s["M"] * int(s["shape"].split()[-1].split("x")[0]) * int(s["shape"].split("x")[-1]) \
                / s["w8a8_ms"] / 1e6
            lines.append(f"| {s['shape']} | {s['M']} | {s['mode']} | {gops:.0f} | "
                         f"{100 * s['w8a8_int8_peak_frac']:.0f} % | {100 * s['w8a8_dram_roofline_frac']:.0f} % | "
                         f"{100 * s['w4a8_dram_roofline_frac']:.0f} % | {100 * s['w8a8_int8_peak_frac_min']:.0f} %, "
                         f"{100 * s['w8a8_dram_roofline_frac_min']:.0f} %, {100 * s['w4a8_dram_roofline_frac_min']:.0f} % |")
    return "\n".join(lines) + "\n"


PANEL_KEYS = (("w8a8_speedup_vs_best_prepacked", "W8A8 vs best prepacked library", 1.2),
              ("w4a8_speedup_vs_best_int8_lib", "W4A8 g128 vs best int8 library", 1.7))
# colour, marker, line style per layer role, the same for the 8B and the embedded shapes of that role; no red,
# black or grey: those are the reference lines
ROLE_STYLES = {"q,o": ("tab:blue", "o", "-"), "k,v": ("tab:orange", "s", "--"),
               "gate,up": ("tab:green", "D", "-."), "down": ("tab:purple", "^", ":")}
EXTRA_STYLES = (("tab:brown", "v", (0, (3, 1, 1, 1))), ("tab:cyan", "P", (0, (5, 2))), ("tab:olive", "X", "-"))


def _role(shape: str) -> tuple[str, str]:
    """'emb gate,up 768x256' -> ('gate,up', '768x256')."""
    name, _, dims = shape.removeprefix("emb ").rpartition(" ")
    return name or dims, dims if name else ""


def plot(summary: list[dict], info: dict, path: Path, machine: str | None = None, libs: list[str] | None = None) -> None:
    """Speedup against M, one panel per (ratio, weight group, regime): rows W8A8 against the best prepacked
    library and W4A8 against the best int8 one; columns the Llama-8B shapes with cold weights (the decode
    case, M <= 64), the same shapes hot, and the embedded model's shapes (hot: ~10 MB, they live in L3).
    Each layer role (q,o / k,v / gate,up / down) has its own colour, marker and line style in every panel, and
    a slight sideways shift, so equal ratios stay visible; one legend for the figure. Each panel's y axis spans
    its data rather than starting at 0: it reaches down to 1.0x (a dashed black line) unless the data sits far
    above it, then the panel says so; the targets (1.2x, 1.7x at M = 1, cold 8B shapes) are a dotted red line.
    The title names the CPU, threads, kernel ISA, date and the libraries measured, all from the run's JSON
    (`machine` replaces the CPU name)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    shapes = sorted({r["shape"] for r in summary}, key=lambda s: ([*LLAMA8B, *EMBEDDED, s].index(s), s))
    big = [s for s in shapes if not s.startswith("emb ")]
    small = [s for s in shapes if s.startswith("emb ")]
    roles = list(dict.fromkeys(_role(s)[0] for s in shapes))
    extra = iter(EXTRA_STYLES * len(roles))
    style = {r: ROLE_STYLES.get(r) or next(extra) for r in roles}
    cols = [(grp, mode, label) for grp, mode, label in (
        (big, "cold", "Llama-8B shapes, cold weights"), (big, "hot", "Llama-8B shapes, hot weights"),
        (small, "hot", "embedded-model shapes, hot weights"))
        if any(r["shape"] in grp and r["mode"] == mode for r in summary)]
    fig, axes = plt.subplots(len(PANEL_KEYS), len(cols), figsize=(5.2 * len(cols), 8.8), squeeze=False)
    all_ms = sorted({r["M"] for r in summary})
    for row, (key, what, target) in enumerate(PANEL_KEYS):
        for col, (grp, mode, label) in enumerate(cols):
            ax = axes[row][col]
            vals = []
            for shape in grp:
                pts = sorted((r["M"], r[key]) for r in summary if r["shape"] == shape and r["mode"] == mode)
                if not pts:
                    continue
                i = roles.index(_role(shape)[0])
                shift = 2 ** (0.07 * (i - (len(roles) - 1) / 2))  # multiplicative: equal spacing on the log axis
                color, marker, ls = style[_role(shape)[0]]
                ax.plot([m * shift for m, _ in pts], [v for _, v in pts], color=color, marker=marker, ls=ls, lw=1.6,
                        ms=6)
                vals += [v for _, v in pts]
            data_lo, data_hi = min(vals), max(vals)
            if grp is big and mode == "cold":
                ax.axhline(target, color="tab:red", ls=":", lw=1.6)
                vals.append(target)
            lo, hi = min(vals), max(vals)
            pad = max(0.04, 0.08 * (hi - lo))
            if max(lo - 1.0, 1.0 - hi) <= 0.5 * (hi - lo):  # 1.0x in view without squashing the data
                ax.axhline(1.0, color="black", ls="--", lw=1.1)
                lo, hi = min(lo, 1.0), max(hi, 1.0)
                pad = max(0.04, 0.08 * (hi - lo))
                ax.set_ylim(lo - pad, hi + pad)
            else:  # say where 1.0x is, in room kept free below the data
                bound = f"at least {data_lo:.2f}x" if lo > 1.0 else f"at most {data_hi:.2f}x"
                ax.text(0.98, 0.02, f"1.0x is off this axis: every point here is {bound}",
                        transform=ax.transAxes, ha="right", va="bottom", fontsize=7.5, color="dimgray")
                ax.set_ylim(lo - 2.2 * pad, hi + pad)
            ms = [m for m in all_ms if any(r["M"] == m and r["mode"] == mode and r["shape"] in grp for r in summary)]
            ax.set_xscale("log", base=2)
            ax.set_xticks(ms, [str(m) for m in ms])
            ax.minorticks_off()
            ax.set_xlim(ms[0] / 1.6, ms[-1] * 1.6)
            ax.grid(alpha=0.3)
            ax.set_title(f"{what}\n{label}", fontsize=10)
            if row == len(PANEL_KEYS) - 1:
                ax.set_xlabel("M (tokens per call)")
            if col == 0:
                ax.set_ylabel("speedup (ratio of median times)")
    handles = []
    for r in roles:
        color, marker, ls = style[r]
        dims = [f"{_role(s)[1]} ({'embedded' if s.startswith('emb ') else '8B'})" for s in shapes if _role(s)[0] == r]
        handles.append(Line2D([], [], color=color, marker=marker, ls=ls, lw=1.6, ms=6, label=f"{r}: {', '.join(dims)}"))
    handles.append(Line2D([], [], color="black", ls="--", lw=1.1, label="1.0x: as fast as the library"))
    if any(mode == "cold" for _, mode, _ in cols):
        handles.append(Line2D([], [], color="tab:red", ls=":", lw=1.6,
                              label=" / ".join(f"{t}x" for *_, t in PANEL_KEYS) + ": targets at M = 1, cold 8B shapes"))
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 3), fontsize=9, frameon=False)
    cpu = (machine or f"{info['cpu']}, {info['cores']} cores").replace("(R)", "")
    libs = [p.replace("qlinear_dynamic ", "") for p in LIBS_INT8 if p in (libs or LIBS_INT8)]
    fig.suptitle(f"NGEMM int8 GEMM speedup vs M: {cpu}, {info['threads']} threads, kernel ISA {info['isa']}, "
                 f"{info['date_utc']} UTC\nbaselines measured in the same run: {', '.join(libs)} "
                 "(each point against the fastest of them)", fontsize=11)
    fig.tight_layout(rect=(0, 0.075, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="two shapes, M in {1, 16, 256}, few repetitions")
    ap.add_argument("--mkl", help="path to libmkl_rt.so (pip download mkl; unzip the wheel's data/lib)")
    ap.add_argument("--reps", type=int, default=None)
    ap.add_argument("--interleave", action="store_true",
                    help="alternate the paths call by call (fairer on a shared machine; needs all pools in memory)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "gemm"))
    ap.add_argument("--skip", type=lambda v: [p.strip() for p in v.split(",")], default=[],
                    help="comma-separated paths to leave out, e.g. 'torch._int_mm (int only)' on CPUs without "
                         "AVX512-VNNI, where it has no fast kernel (~0.3 GOP/s on an AVX2 AMD EPYC)")
    ap.add_argument("--replot-from", "--replot", metavar="JSON",
                    help="only redraw JSON's PNG (next to it) from the result file, in seconds; nothing is rerun")
    ap.add_argument("--machine", default=None,
                    help="with --replot-from: the machine as the title names it (default: the JSON's CPU and cores)")
    ap.add_argument("--shape", action="append", default=None, metavar="SUBSTR",
                    help="only the shapes whose name contains SUBSTR (repeatable), e.g. --shape 'k,v'")
    args = ap.parse_args()
    if args.replot_from:
        src = Path(args.replot_from)
        d = json.loads(src.read_text())
        plot(d["summary"], d["machine"], src.with_suffix(".png"), machine=args.machine,
             libs=sorted({r["path"] for r in d["rows"]}))
        print(f"wrote {src.with_suffix('.png')}")
        return
    if unknown := set(args.skip) - set(COLS):
        ap.error(f"--skip: unknown paths {sorted(unknown)}; known: {', '.join(COLS)}")
    if {"tessera W8A8", "tessera W4A8 g128"} & set(args.skip):
        ap.error("--skip: the Tessera paths are what this benchmark measures")
    nt = torch.get_num_threads()
    info = machine_info()
    info.update(measure_machine(nt))
    print(info, flush=True)
    mkl = MklPack(args.mkl, nt) if args.mkl else None
    info["mkl"] = args.mkl or "not given (pip `mkl` is installable from PyPI; pass --mkl to include it)"
    backend = cpu_isa.best_backend()
    if args.quick:
        big, small = {"q,o 4096x4096": LLAMA8B["q,o 4096x4096"]}, {"emb gate,up 768x256": EMBEDDED["emb gate,up 768x256"]}
        Ms, cold_Ms, reps = [1, 16, 256], [1, 16], args.reps or 8
    else:
        big, small = LLAMA8B, EMBEDDED
        Ms, cold_Ms, reps = [1, 4, 16, 64, 256, 1024], [1, 4, 16, 64], args.reps or 24
    if args.shape:
        big, small = ({n: nk for n, nk in d.items() if any(x in n for x in args.shape)} for d in (big, small))
        if not big and not small:
            ap.error(f"--shape {args.shape}: no shape matches; known: {', '.join([*LLAMA8B, *EMBEDDED])}")
    rows = []
    for name, (N, K) in big.items():
        rows += bench_shape(name, N, K, Ms, cold_Ms, mkl, backend, reps, args.interleave, args.skip)
    for name, (N, K) in small.items():  # the embedded model is ~10 MB: it lives in L3 when decoding
        rows += bench_shape(name, N, K, Ms, [], mkl, backend, reps, args.interleave, args.skip)
    info["loadavg_at_end"] = os.getloadavg()
    info["interleaved"] = args.interleave
    info["skipped"] = args.skip
    summary = analyze(rows, info)
    out = Path(args.out if not args.quick else args.out + "_quick")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"machine": info, "rows": rows, "summary": summary}, indent=1))
    out.with_suffix(".md").write_text(markdown(rows, summary, info, args.quick))
    plot(summary, info, out.with_suffix(".png"), libs=sorted({r["path"] for r in rows}))
    print(f"wrote {out}.json, {out}.md and {out}.png")


if __name__ == "__main__":
    main()
