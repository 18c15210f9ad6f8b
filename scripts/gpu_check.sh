#!/usr/bin/env bash
# The one prepared GPU check (run it whenever a GPU machine is lent; never in CI).
# Runs every feature's GPU checks with a time limit each, prints a summary, and writes
# gpu_check_<gpu>.{log,md} plus the benchmark results into $OUT (or benchmarks/results).
# Budget: about 8 minutes on an H200 (one device call may last 10). Features add a line to CHECKS below.
# ONLY=dist,decode-bench bash scripts/gpu_check.sh reruns some checks (after a fix, on what lease is left).
set -u
cd "$(dirname "$0")/.."
RES=${OUT:-benchmarks/results}
mkdir -p "$RES"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
PY=${PYTHON:-python3}
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)
GPU=${GPU:-no-gpu}
SLUG=$(echo "$GPU" | tr -c 'A-Za-z0-9\n' '_' | tr -s _ | sed 's/_$//')
LOG=$RES/gpu_check_$SLUG.log
: >"$LOG"
echo "GPU check on: $GPU  ($(date -u +%FT%TZ))" | tee -a "$LOG"
$PY -c "import torch, triton, transformers; print('torch', torch.__version__, 'triton', triton.__version__, 'transformers', transformers.__version__, 'cuda', torch.version.cuda)" 2>&1 | tee -a "$LOG"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1 | tee -a "$LOG"

# name | time limit (s) | command
CHECKS=(
  "gpu-tests|150|$PY -m pytest -q -m gpu tests -p no:cacheprovider"  # 83 s for 4 tests on an H200; now 7
  # the defaults come from the 2026-11-27 sweeps (results/ngemm_gpu_NVIDIA_H200*.json): a short sweep re-checks them
  "ngemm|120|$PY scripts/gpu_checks/ngemm.py --sweep-s 30 --out $RES/ngemm_gpu_$SLUG"
  "shadowkv|150|$PY scripts/gpu_checks/shadowkv.py --out $RES/shadowkv_efficiency_gpu_$SLUG"
  "decode-bench|150|$PY benchmarks/bench_decode.py --device cuda --batch-sizes 1,8,32 --new-tokens 128 --out $RES/decode_gpu_$SLUG"
  # the engine with W8A8 linears on the GPU (Triton quantizer + GEMM, q/k/v and gate/up fused) and with fused
  # bf16 projections, beside plain bf16 and transformers (the embedded model is launch-bound on a GPU)
  "decode-w8a8|180|$PY benchmarks/bench_decode.py --device cuda --batch-sizes 1,8 --new-tokens 128 --quant none,fused,w8a8 --out $RES/decode_quant_gpu_$SLUG"
  # the long-context stage on the GPU for 20 s (writes only under /tmp), as `make train-vt` runs it (10,149 steps in 5 min on an H200)
  "train-long-smoke|120|$PY scripts/train_long.py --device cuda --no-compile --workers 8 --wall --minutes 0.33 --eval-every 1000 --out /tmp/tl_model --work /tmp/tl_work"
  # last: its kernels spin on flags, so a hang (each wait times out after 10 s) cannot cost the others
  "dist|120|$PY scripts/gpu_checks/dist.py --out $RES/dist_gpu_$SLUG.json"
  # COMET's fused MoE layers (spin on flags too, so after dist): W = 2, 4 virtual ranks vs the references,
  # then the fused launches vs the plain grouped GEMM by column blocks and n_c (inputs of the MoE model)
  "comet|150|$PY scripts/gpu_checks/comet.py --out $RES/comet_gpu_$SLUG.json"
)
SUMMARY=()
for c in "${CHECKS[@]}"; do
  IFS='|' read -r name limit cmd <<<"$c"
  [[ -n ${ONLY:-} && ",$ONLY," != *",$name,"* ]] && continue
  script=$(echo "$cmd" | awk '{print $2}')
  if [[ $script == *.py && $script != -m && ! -f $script ]]; then
    SUMMARY+=("| $name | skipped (no $script) | - |"); continue
  fi
  echo "=== $name ($cmd)" | tee -a "$LOG"
  t0=$(date +%s)
  timeout "$limit" bash -c "$cmd" 2>&1 | tee -a "$LOG"
  rc=${PIPESTATUS[0]}
  dt=$(( $(date +%s) - t0 ))
  status=$([[ $rc == 0 ]] && echo PASS || ([[ $rc == 124 ]] && echo "TIMEOUT" || echo "FAIL (rc $rc)"))
  SUMMARY+=("| $name | $status | ${dt}s |")
done
{
  echo "# GPU check: $GPU"
  echo
  echo "Run $(date -u +%FT%TZ) by scripts/gpu_check.sh; full output in gpu_check_$SLUG.log."
  echo
  echo "| check | result | time |"
  echo "|---|---|---|"
  printf '%s\n' "${SUMMARY[@]}"
} >"$RES/gpu_check_$SLUG.md"
echo; cat "$RES/gpu_check_$SLUG.md"
