"""GPU check for issue 4: the ShadowKV backend on CUDA (its three Triton kernels compiled: landmark
scoring, gather + low-rank rebuild + RoPE, masked GQA decode over the gathered buffer) against the same
backend's torch path on the CPU, on a padded batch; then the one-layer efficiency benchmark on the GPU.
Exits 1 on a mismatch, 2 without a CUDA device.

    python scripts/gpu_checks/shadowkv.py --out benchmarks/results/shadowkv_efficiency_gpu   (~1-2 min)
    python scripts/gpu_checks/shadowkv.py --device cpu --no-bench     (a dry run of the script itself)
"""

from __future__ import annotations

import argparse
import subprocess
import sys

import torch


@torch.inference_mode()
def logits(device: str, prompts, tokens, opts):
    """Prefill a right-padded batch, then decode `tokens` [steps, B] -> logits [steps + 1, B, V]."""
    from tessera.config import ModelConfig
    from tessera.kv import make_cache
    from tessera.kv.cache import StepContext
    from tessera.kv.presses import NoPress
    from tessera.models import LlamaForCausalLM

    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=97, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                      num_attention_heads=8, num_key_value_heads=2, head_dim=32, max_position_embeddings=8192)
    model = LlamaForCausalLM(cfg).eval().to(device)
    cache = make_cache("shadowkv", cfg, len(prompts), torch.float32, device, NoPress(), **opts)
    lens = torch.tensor([len(p) for p in prompts], device=device)
    S = int(lens.max())
    inp = torch.zeros(len(prompts), S, dtype=torch.long, device=device)
    for i, p in enumerate(prompts):
        inp[i, : len(p)] = torch.tensor(p, device=device)
    pos = torch.arange(S, device=device).expand(len(prompts), S)
    out = [model(inp, pos, cache, StepContext(pos, lens, True), logits_index=lens - 1)[:, -1].cpu()]
    seq = lens.clone()
    for t in tokens:
        out.append(model(t.to(device)[:, None], seq[:, None], cache,
                         StepContext(seq[:, None], torch.ones_like(seq), False))[:, -1].cpu())
        seq = seq + 1
    return torch.stack(out), cache.hit_rate()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--out", default="benchmarks/results/shadowkv_efficiency_gpu")
    ap.add_argument("--no-bench", action="store_true")
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device")
        return 2
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(3, 97, (n,), generator=g).tolist() for n in (1500, 700, 30, 1100)]  # one dense row
    tokens = torch.randint(3, 97, (6, len(prompts)), generator=g)
    ok = True
    for landmark in ("mean", "bounds"):
        opts = dict(rank=24, sparse_budget=128, outlier_chunks=4, landmark=landmark)
        ref, ref_hits = logits("cpu", prompts, tokens, opts)
        got, hits = logits(args.device, prompts, tokens, opts)
        err = (got - ref).abs().max().item()
        same = bool((got.argmax(-1) == ref.argmax(-1)).all())
        print(f"shadowkv ({landmark} landmarks) {args.device} vs cpu torch path: max |logit diff| {err:.2e}, "
              f"same argmax {same}, hit rate {hits:.3f} vs {ref_hits:.3f}")
        ok = ok and err < 1e-3 and same
    if not args.no_bench:
        cmd = [sys.executable, "benchmarks/bench_shadowkv_efficiency.py", "--device", args.device, "--heads", "32",
               "--kv-heads", "8", "--lengths", "32768", "65536", "--steps", "10", "--cap-mib", "8192",
               "--out", args.out]
        print(" ".join(cmd), flush=True)
        ok = subprocess.run(cmd, timeout=150).returncode == 0 and ok
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
