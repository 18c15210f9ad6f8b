"""Checks that need a CUDA device (skipped elsewhere; run by scripts/gpu_check.sh)."""

import pytest
import torch

from tessera.config import SamplingParams
from tessera.engine import LLM
from tessera.tasks.reasoning import EVAL_SEED_BASE, make_problem, score

pytestmark = pytest.mark.gpu


def test_cuda_fp32_matches_cpu_greedy():
    torch.backends.cuda.matmul.allow_tf32 = False
    p = make_problem(EVAL_SEED_BASE + 1, difficulty=6).prompt
    sp = SamplingParams(max_new_tokens=64, ignore_eos=True)
    cpu = LLM.load(device="cpu").generate([p], sp).completions[0].token_ids
    gpu = LLM.load(device="cuda", dtype=torch.float32).generate([p], sp).completions[0].token_ids
    assert gpu == cpu


def test_cuda_bf16_batch_solves_problems():
    llm = LLM.load(device="cuda")
    assert llm.dtype == torch.bfloat16
    probs = [make_problem(EVAL_SEED_BASE + i, difficulty=12) for i in range(8)]
    out = llm.generate([q.prompt for q in probs], SamplingParams(max_new_tokens=2048))
    correct = sum(score(q, c.text) for q, c in zip(probs, out.completions))
    assert correct >= 6, f"{correct}/8 correct in bf16 on CUDA"
    assert out.stats.peak_kv_bytes > 0
