# The README's two commands: `make demo` and `make test`. Both create .venv when it is missing.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-heavy setup lint train train-moe train-moe-mixtral train-vt bench-ngemm compat-transformers clean-venv

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# CPU wheel first: a plain `pip install torch` would pull a multi-GB CUDA build.
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q "torch==2.13.0"
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/tessera demo

test: $(STAMP)
	TRITON_INTERPRET=1 $(BIN)/python -m pytest -q -ra -m "not heavy"

# End-to-end runs of interpreted Triton kernels on the embedded models (minutes each): not in `make test`.
test-heavy: $(STAMP)
	TRITON_INTERPRET=1 $(BIN)/python -m pytest -q -ra -m heavy

lint: $(STAMP)
	$(BIN)/ruff check tessera tests benchmarks scripts

# The committed weights (2026-11-27): induction head first, then reasoning (60 min of steps), then the
# long-context stage (40 min) into tessera/assets/tiny-reasoner. ~115 min wall on 2 cores.
train: $(STAMP)
	$(BIN)/python scripts/train_tiny.py --induction-steps 1000 --repeat-share 0.1 --out runs/train/reasoner --work runs/train/tiny
	$(BIN)/python scripts/train_long.py --init-from runs/train/reasoner --work runs/train/long --minutes 40 \
		--ruler-share 0.5 --repeat-share 0.05

# The embedded MoE reasoner (tessera/assets/tiny-moe-reasoner; docs/moe.md): Qwen2-MoE format, layer 0 a dense
# SwiGLU, layers 1-3 with 8 experts of width 256, top-2; the reasoning task with a load-balancing loss. First an
# induction head (repeat-copy steps until held-out copy accuracy passes 0.9, ~550), then four stages with step
# budgets (a loaded machine takes longer instead of training less), each from the weights of the one before with
# a fresh warm-up and cosine: 1,600 steps from 2e-3; 800 from 8e-4; 500 from 3e-4; 500 from 2e-4 on problems no
# earlier stage drew (--first-problem). The far copies and the question's final sum weigh 20x in the loss
# (--weight-final-sum). One run: 1 h 44 min on the 2-vCPU EPYC, 94.5% held out
# (benchmarks/results/train_moe_cpu.log).
MOE = $(BIN)/python scripts/train_tiny.py --arch moe --moe-layout dense0 --weight-final-sum --curriculum-minutes 0 \
	--repeat-share 0.05
train-moe: $(STAMP)
	$(BIN)/python scripts/train_tiny.py --arch moe --moe-layout dense0 --weight-final-sum --induction-steps 1000 \
		--repeat-share 0.1 --steps 1600 --eval-every 400 --out runs/train/moe/s1 --work runs/train/moe/w1
	$(MOE) --init-from runs/train/moe/s1 --steps 800 --lr 8e-4 --eval-every 400 \
		--out runs/train/moe/s2 --work runs/train/moe/w2
	$(MOE) --init-from runs/train/moe/s2 --steps 500 --lr 3e-4 --eval-every 500 \
		--out runs/train/moe/s3 --work runs/train/moe/w3
	$(MOE) --init-from runs/train/moe/s3 --steps 500 --lr 2e-4 --eval-every 500 --first-problem 12800 \
		--out tessera/assets/tiny-moe-reasoner --work runs/train/moe/w4

# The previous embedded MoE reasoner's recipe (every layer routed, Mixtral format, no final-sum weight; docs/moe.md):
# 2,000 steps from scratch (curriculum), then 1,000 from 8e-4, 800 from 3e-4, 800 from 2e-4 on new problems.
# 92.0% held out from stages run in pieces (~3.2 h), 89.0% in one 2 h 19 min run; writes runs/train/moe_mixtral/model
# (logs: benchmarks/results/archive/train_moe_*_cpu.log).
train-moe-mixtral: $(STAMP)
	$(BIN)/python scripts/train_tiny.py --arch moe --moe-layout mixtral --steps 2000 --eval-every 500 \
		--out runs/train/moe_mixtral/s1 --work runs/train/moe_mixtral/w1
	$(BIN)/python scripts/train_tiny.py --arch moe --moe-layout mixtral --init-from runs/train/moe_mixtral/s1 --steps 1000 --lr 8e-4 \
		--curriculum-minutes 0 --eval-every 500 \
		--out runs/train/moe_mixtral/s2 --work runs/train/moe_mixtral/w2
	$(BIN)/python scripts/train_tiny.py --arch moe --moe-layout mixtral --init-from runs/train/moe_mixtral/s2 --steps 800 --lr 3e-4 \
		--curriculum-minutes 0 --eval-every 400 \
		--out runs/train/moe_mixtral/s3 --work runs/train/moe_mixtral/w3
	$(BIN)/python scripts/train_tiny.py --arch moe --moe-layout mixtral --init-from runs/train/moe_mixtral/s3 --steps 800 --lr 2e-4 \
		--curriculum-minutes 0 --eval-every 400 --first-problem 12800 \
		--out runs/train/moe_mixtral/model --work runs/train/moe_mixtral/w4

# Stage 4 of the committed weights (2026-11-27, after `make train`): variable tracking, 5 min of wall time on
# one H200 with 10 batch-building processes (10,149 steps); reads and rewrites tessera/assets/tiny-reasoner.
# On this CPU (VT_DEVICE=cpu VT_WORKERS=1) the same number of steps takes ~4 h: raise VT_MINUTES to ~250.
VT_DEVICE ?= cuda
VT_MINUTES ?= 5
VT_WORKERS ?= 10
train-vt: $(STAMP)
	$(BIN)/python scripts/train_long.py --work runs/train/vt --device $(VT_DEVICE) --no-compile \
		--workers $(VT_WORKERS) --wall --minutes $(VT_MINUTES) --eval-every 500 \
		--vt-share 0.5 --lookup-weight 10 --warm 0 --ramp 0.05 --repeat-share 0.05 --ruler-share 0.6

# Long traces for the R-KV evaluation at 1K-3K budgets (tessera/tasks/long_reasoning.py, 8.5K-15.5K tokens): fine-tunes
# the embedded reasoner into runs/train/long_reasoning/model (not the committed weights). Resumable: rerunning
# continues from runs/train/long_reasoning/ckpt.pt. Not run yet; wall time from a probe in docs/kv_compression.md.
train-long-reasoning: $(STAMP)
	$(BIN)/python scripts/train_long_reasoning.py --steps 3000 --resume

# NGEMM's GEMM table (with MKL pack when pip can fetch it) and quantized decode on this CPU: scripts/bench_ngemm.sh
bench-ngemm: $(STAMP)
	PY=$(BIN)/python scripts/bench_ngemm.sh

# The transformers adapter (tessera/kv/hf.py) at both ends of the range pyproject.toml declares, each in its own
# environment: build/tf-compat/<spec> holds that transformers and its dependencies, over this venv's torch.
# Slow (a pip install and a test run per end); not part of `make test`, which tests the installed release.
TF_OLDEST ?= 5.0.0
TF_NEWEST ?= transformers>=5,<6
compat-transformers: $(STAMP)
	@for spec in "transformers==$(TF_OLDEST)" "$(TF_NEWEST)"; do \
	  dir=build/tf-compat/$$(echo "$$spec" | tr -c 'A-Za-z0-9.\n' _); \
	  $(BIN)/python -m pip install -q --upgrade --target "$$dir" "$$spec" || exit 1; \
	  echo "== $$spec: transformers $$(PYTHONPATH=$$dir $(BIN)/python -c 'import transformers; print(transformers.__version__)')"; \
	  PYTHONPATH=$$dir TRITON_INTERPRET=1 $(BIN)/python -m pytest -q -p no:cacheprovider \
	    tests/test_reliability_hf_compat.py tests/test_model_parity.py || exit 1; \
	done

clean-venv:
	rm -rf $(VENV)
