#!/usr/bin/env bash
# NGEMM on this CPU, in one command (`make bench-ngemm`; ~15-25 min on 2 cores): the full interleaved
# int8 GEMM table against fp32, fbgemm, x86 (oneDNN) and MKL's pack API, then end-to-end decode of the
# embedded model in fp32, W8A8 and W4A8. Results go to benchmarks/results/ under a name derived from the
# CPU model, so runs on different VMs (AMX Xeon, AVX2 EPYC, ...) sit side by side.
#   MKL: `pip download mkl` (~220 MB, once, into ~/.cache/tessera/mkl); NGEMM_MKL=0 leaves it out.
#   NGEMM_DRY=1 prints the benchmark commands instead of running them.
#   torch._int_mm is left out where the CPU has no AVX512-VNNI: it has no fast kernel there (0.3 GOP/s).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
export PYTHONPATH=$PWD
tag=$(lscpu | sed -n 's/^Model name: *//p' | head -1 | tr -c 'A-Za-z0-9' _ | tr -s _ | sed 's/_$//' | cut -c1-40)
isa=$($PY -c "from tessera.kernels.ngemm import cpu_isa; print(cpu_isa.best_backend())")
echo "CPU: $tag, int8 kernel ISA: $isa"

mkl_args=()
if [[ "${NGEMM_MKL:-1}" != 0 ]]; then
  cache=${XDG_CACHE_HOME:-$HOME/.cache}/tessera/mkl
  lib=$(ls "$cache"/mkl-*.data/data/lib/libmkl_rt.so.* 2>/dev/null | head -1 || true)
  if [[ -z "$lib" ]]; then
    mkdir -p "$cache"
    if timeout 600 $PY -m pip download -q --no-deps mkl -d "$cache"; then
      $PY -m zipfile -e "$(ls "$cache"/mkl-*.whl | head -1)" "$cache"
      lib=$(ls "$cache"/mkl-*.data/data/lib/libmkl_rt.so.* 2>/dev/null | head -1 || true)
    fi
  fi
  if [[ -n "$lib" ]]; then mkl_args=(--mkl "$lib"); else echo "MKL unavailable (pip download failed): left out"; fi
fi

skip=()
if [[ "$isa" != amx && "$isa" != avx512vnni ]]; then skip=(--skip "torch._int_mm (int only)"); fi
run=()
if [[ "${NGEMM_DRY:-0}" != 0 ]]; then run=(echo); fi
"${run[@]}" $PY benchmarks/bench_gemm.py --interleave "${mkl_args[@]}" "${skip[@]}" --out "benchmarks/results/gemm_$tag"
"${run[@]}" $PY benchmarks/gemm_bounds.py "benchmarks/results/gemm_$tag.json" --out "benchmarks/results/gemm_bounds_$tag"
"${run[@]}" $PY benchmarks/bench_decode.py --quant none,w8a8,w4a8 --new-tokens 128 --out "benchmarks/results/decode_quant_$tag"
echo "wrote benchmarks/results/{gemm,gemm_bounds,decode_quant}_$tag.{json,md}"
