"""Checks that need a CUDA device (skipped elsewhere; run by scripts/gpu_check.sh)."""

import pytest
import torch

from tessera.config import SamplingParams
from tessera.engine import LLM
from tessera.tasks.reasoning import EVAL_SEED_BASE, make_problem

pytestmark = pytest.mark.gpu


def test_cuda_fp32_matches_cpu_greedy():
    torch.backends.cuda.matmul.allow_tf32 = False
    p = make_problem(EVAL_SEED_BASE + 1, difficulty=6).prompt
    sp = SamplingParams(max_new_tokens=64, ignore_eos=True)
    cpu = LLM.load(device="cpu").generate([p], sp).completions[0].token_ids
    gpu = LLM.load(device="cuda", dtype=torch.float32).generate([p], sp).completions[0].token_ids
    assert gpu == cpu


def test_cuda_bf16_batch_agrees_with_cpu_fp32():
    """bf16 on CUDA gives the same final answers as fp32 on the CPU for most problems."""
    from tessera.tasks.reasoning import extract_answer

    probs = [make_problem(EVAL_SEED_BASE + i, difficulty=12) for i in range(8)]
    sp = SamplingParams(max_new_tokens=2048)
    llm = LLM.load(device="cuda")
    assert llm.dtype == torch.bfloat16
    gpu = llm.generate([q.prompt for q in probs], sp).completions
    cpu = LLM.load().generate([q.prompt for q in probs], sp).completions
    same = sum(extract_answer(a.text) == extract_answer(b.text) for a, b in zip(gpu, cpu))
    assert same >= 6, f"{same}/8 answers agree"
    assert all(extract_answer(c.text) is not None for c in gpu)


def test_shadowkv_host_fetches_do_not_overwrite_a_pending_copy():
    """Two fetches with CPU indices while the stream is busy: the second must not refill the pinned stage
    before the first copy has read it (no `.cpu()` sync happens with CPU indices)."""
    from tessera.kv.shadowkv.host import HostValues

    H, T, C, D = 4, 64, 8, 16
    v = torch.randn(H, T, D, device="cuda")
    host = HostValues(v, C)
    want = v.view(H, T // C, C, D)
    heads, chunks = torch.arange(H), torch.zeros(H, dtype=torch.long)
    torch.cuda._sleep(200_000_000)  # ~0.1 s of GPU time queued ahead of the first copy
    first = host.fetch(heads, chunks)  # [H, C, D], copy still pending
    second = host.fetch(heads, chunks + 1)
    assert torch.equal(first, want[:, 0]) and torch.equal(second, want[:, 1])


def test_cuda_w8a8_engine_matches_cpu_w8a8():
    """quantize_model on a CUDA model keeps the int8 linears on the GPU (Triton quantizer + GEMM); in fp32
    the activations quantize bit-identically and the integer sums are exact, so greedy tokens match the CPU
    W8A8 engine (the epilogues differ by an fma: one ulp)."""
    from tessera.quant import quantize_model

    torch.backends.cuda.matmul.allow_tf32 = False
    p = make_problem(EVAL_SEED_BASE + 2, difficulty=6).prompt
    sp = SamplingParams(max_new_tokens=64, ignore_eos=True)
    out = {}
    for dev in ("cpu", "cuda"):
        llm = LLM.load(device=dev, dtype=torch.float32)
        quantize_model(llm.model, "w8a8")
        assert all(b.device.type == dev for b in llm.model.buffers())
        out[dev] = llm.generate([p], sp).completions[0].token_ids
    assert out["cuda"] == out["cpu"]


def test_cuda_w4a8_refused_with_a_clear_error():
    from tessera.quant import quantize_model

    with pytest.raises(ValueError, match="w4a8 has CPU kernels only"):
        quantize_model(LLM.load(device="cuda").model, "w4a8")
