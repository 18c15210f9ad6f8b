"""Shared by the KV-backend and press tests: a tiny random model, random prompts, a prefill + decode driver,
and the registered presses the shared press tests run on."""

import torch

from tessera.config import ModelConfig
from tessera.kv.cache import StepContext
from tessera.kv.presses import PRESSES, ScorerPress
from tessera.models import LlamaForCausalLM

#: every registered decode-time press (budget/buffer/window scorers): the shared press tests run on each
DECODE_PRESSES = sorted(name for name, cls in PRESSES.items() if issubclass(cls, ScorerPress))


def tiny_model(heads=4, kv_heads=2, head_dim=16, layers=2, seed=0):
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=head_dim,
                      max_position_embeddings=4096, rope_theta=10000.0)
    return LlamaForCausalLM(cfg).eval()


@torch.inference_mode()
def prefill(model, cache, prompts):
    """Right-padded prefill -> (logits at each row's last prompt token [B, V], prompt lengths [B])."""
    lens = torch.tensor([len(p) for p in prompts])
    S = int(lens.max())
    inp = torch.zeros(len(prompts), S, dtype=torch.long)
    for i, p in enumerate(prompts):
        inp[i, : len(p)] = torch.tensor(p)
    pos = torch.arange(S).expand(len(prompts), S)
    return model(inp, pos, cache, StepContext(pos, lens, True), logits_index=lens - 1)[:, -1], lens


@torch.inference_mode()
def decode(model, cache, lens, steps=4, seed=1, tokens=None):
    """`steps` decode steps after a prefill of `lens` tokens, fed fixed random tokens (or `tokens` [steps, B])."""
    g = torch.Generator().manual_seed(seed)
    out, seq = [], lens.clone()
    for i in range(steps):
        tok = tokens[i][:, None] if tokens is not None else torch.randint(0, model.config.vocab_size, (len(lens), 1), generator=g)
        out.append(model(tok, seq[:, None], cache, StepContext(seq[:, None], torch.ones_like(seq), False))[:, -1])
        seq = seq + 1
    return out


def run_steps(model, cache, prompts, steps=4, seed=1, tokens=None):
    """Prefill then `steps` decode steps -> logits [steps+1, B, V]."""
    first, lens = prefill(model, cache, prompts)
    return torch.stack([first] + decode(model, cache, lens, steps, seed, tokens))


def random_prompts(lengths, vocab=97, seed=2):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (n,), generator=g).tolist() for n in lengths]
