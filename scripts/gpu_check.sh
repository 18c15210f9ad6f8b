#!/usr/bin/env bash
# The one prepared GPU check (run it whenever a GPU machine is lent; never in CI).
# Runs every feature's GPU checks with a time limit each, prints a summary, and writes
# gpu_check_<gpu>.{log,md} plus the benchmark results into $OUT (or benchmarks/results).
# Budget: about 8 minutes on an H200 (one device call may last 10). Features add a line to CHECKS below.
# ONLY=dist,decode-bench bash scripts/gpu_check.sh reruns some checks (after a fix, on what lease is left).
# GPU_CHECKS="name|limit|command" (one check per line) replaces the list below (tests use it).
# A check's result: PASS, FAIL (rc N), TIMEOUT, or SKIP when it ran nothing: pytest selected or ran no test
# (rc 5, or only "N skipped"), the check printed a line ending in "skipped" (no CUDA device), it exited 77
# (the automake convention for a skipped test), or its script is missing. "PASS (N skipped)" when some ran.
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
if [[ -n ${GPU_CHECKS:-} ]]; then mapfile -t CHECKS <<<"$GPU_CHECKS"; fi

# status <rc> <output file>: what one check's exit status and output say
status() {
  local rc=$1 out=$2 summary passed skipped
  summary=$(grep -E '(^|[ =])[0-9]+ (passed|failed|skipped|deselected|errors?|warnings?|xfailed|xpassed)\b.* in [0-9.]+s' "$out" | tail -1)
  passed=$(grep -oE '[0-9]+ passed' <<<"$summary" | grep -oE '[0-9]+' || true)
  skipped=$(grep -oE '[0-9]+ skipped' <<<"$summary" | grep -oE '[0-9]+' || true)
  if [[ $rc == 124 ]]; then echo TIMEOUT
  elif [[ $rc == 77 ]]; then echo "SKIP (exit 77)"
  elif [[ $rc == 5 && -n $summary$(grep -E 'no tests ran' "$out") ]]; then echo "SKIP (no test selected)"
  elif [[ $rc != 0 ]]; then echo "FAIL (rc $rc)"
  elif [[ -n $summary && ${passed:-0} == 0 && ${skipped:-0} -gt 0 ]]; then echo "SKIP ($skipped skipped)"
  elif [[ -n $summary && ${skipped:-0} -gt 0 ]]; then echo "PASS ($skipped skipped)"
  elif [[ -z $summary ]] && grep -qiE 'skipped[.)]?[[:space:]]*$' "$out"; then
    echo "SKIP ($(grep -iE 'skipped[.)]?[[:space:]]*$' "$out" | tail -1 | cut -c1-80))"
  else echo PASS
  fi
}

for c in "${CHECKS[@]}"; do
  [[ -z $c ]] && continue
  IFS='|' read -r name limit cmd <<<"$c"
  [[ -n ${ONLY:-} && ",$ONLY," != *",$name,"* ]] && continue
  script=$(echo "$cmd" | awk '{print $2}')
  if [[ $script == *.py && $script != -m && ! -f $script ]]; then
    SUMMARY+=("| $name | SKIP (no $script) | - |"); continue
  fi
  echo "=== $name ($cmd)" | tee -a "$LOG"
  out=$(mktemp)
  t0=$(date +%s)
  timeout "$limit" bash -c "$cmd" 2>&1 | tee "$out" | tee -a "$LOG"
  rc=${PIPESTATUS[0]}
  dt=$(( $(date +%s) - t0 ))
  SUMMARY+=("| $name | $(status "$rc" "$out") | ${dt}s |")
  rm -f "$out"
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
