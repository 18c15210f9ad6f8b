"""MoE families against transformers' own eager implementation, from tiny random checkpoints built here.

For Mixtral, Qwen2-MoE (shared expert, a dense layer mixed in), Qwen3-MoE and OLMoE: logits within 1e-4
in fp32 over a padded batch, identical greedy tokens for 32 steps through our engine, the MoE block alone
within 1e-5, and a save -> transformers load round trip.
"""

import pytest
import torch
import transformers

from tessera.config import SamplingParams
from tessera.engine import LLM
from tessera.models import load_model, save_model

BASE = dict(vocab_size=97, hidden_size=64, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16, max_position_embeddings=256, rms_norm_eps=1e-6,
            tie_word_embeddings=False, num_experts_per_tok=2)
MOE = {
    "mixtral": (transformers.MixtralConfig, transformers.MixtralForCausalLM, dict(num_local_experts=6)),
    "qwen2_moe": (transformers.Qwen2MoeConfig, transformers.Qwen2MoeForCausalLM, dict(
        num_experts=6, moe_intermediate_size=32, shared_expert_intermediate_size=40, norm_topk_prob=False,
        mlp_only_layers=[1], decoder_sparse_step=1)),
    "qwen3_moe": (transformers.Qwen3MoeConfig, transformers.Qwen3MoeForCausalLM, dict(
        num_experts=6, moe_intermediate_size=32, norm_topk_prob=True, decoder_sparse_step=2)),
    "olmoe": (transformers.OlmoeConfig, transformers.OlmoeForCausalLM, dict(num_experts=6, clip_qkv=2.5)),
}


def tiny_moe(family: str, path):
    cfg_cls, model_cls, extra = MOE[family]
    torch.manual_seed(0)
    m = model_cls(cfg_cls(**{**BASE, **extra})).eval()
    m.set_experts_implementation("eager")  # the plain per-expert loop as the reference (default: grouped_mm)
    with torch.no_grad():  # HF inits routers and biases to zero: randomise so that routing and biases matter
        for name, p in m.named_parameters():
            if name.endswith("bias") or "gate" in name or "norm" in name:
                p.normal_(0, 0.5) if not name.endswith("norm.weight") else p.uniform_(0.5, 1.5)
    m.save_pretrained(path)
    return m


@pytest.fixture(scope="module", params=sorted(MOE))
def pair(request, tmp_path_factory):
    path = tmp_path_factory.mktemp(request.param)
    return request.param, tiny_moe(request.param, path), load_model(path), path


def test_logits_match_transformers_over_a_padded_batch(pair):
    family, hf, ours, _ = pair
    assert ours.moe_blocks(), "the model should have routed layers"
    ids = torch.randint(3, 97, (3, 40), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, 30:] = 0  # right padding: real tokens see only real tokens under the causal mask
    mask[2, 12:] = 0
    with torch.no_grad():
        ref = hf(ids, attention_mask=mask).logits
        got = ours(ids)
    for b, n in enumerate(mask.sum(1).tolist()):
        torch.testing.assert_close(got[b, :n], ref[b, :n], atol=1e-4, rtol=1e-4)


def test_moe_block_alone_matches(pair):
    family, hf, ours, _ = pair
    i = min(ours.moe_blocks())
    x = torch.randn(2, 9, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = hf.model.layers[i].mlp(x)
        got = ours.model.layers[i].mlp(x)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


def test_greedy_tokens_match_for_32_steps(pair):
    family, hf, ours, _ = pair
    prompts = [[5, 17, 33, 8, 61], [9, 9, 40]]
    out = LLM(ours).generate(prompts, SamplingParams(max_new_tokens=32, ignore_eos=True))
    for p, c in zip(prompts, out.completions):
        ref = hf.generate(torch.tensor([p]), max_new_tokens=32, do_sample=False, min_new_tokens=32,
                          pad_token_id=0)[0, len(p):].tolist()
        assert c.token_ids == ref


def test_save_model_loads_back_in_transformers(pair, tmp_path):
    family, hf, ours, _ = pair
    save_model(ours, tmp_path)
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, experts_implementation="eager").eval()
    assert type(back).__name__ == type(hf).__name__
    ids = torch.randint(3, 97, (2, 16), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(back(ids).logits, hf(ids).logits, atol=1e-5, rtol=1e-5)
    again = load_model(tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(again(ids), ours(ids), atol=0, rtol=0)


def test_qwen2_moe_without_a_shared_expert_round_trips_through_transformers(tmp_path):
    # transformers' Qwen2-MoE always builds a shared expert (default width 5632): save_model must say width 0
    # and write the 0-wide tensors, or transformers adds a random shared expert / reports missing tensors
    from tessera.config import ModelConfig
    from tessera.models import CausalLM

    cfg = ModelConfig(**BASE, model_type="qwen2_moe", num_experts=4, moe_intermediate_size=32, mlp_only_layers=(0,),
                      norm_topk_prob=True)
    torch.manual_seed(0)
    ours = CausalLM(cfg).eval()
    with torch.no_grad():
        for p in ours.parameters():
            p.normal_(0, 0.3)
    save_model(ours, tmp_path)
    back, info = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path, experts_implementation="eager", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert back.config.shared_expert_intermediate_size == 0
    ids = torch.randint(3, 97, (2, 16), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(back.eval()(ids).logits, ours(ids), atol=1e-5, rtol=1e-5)
    again = load_model(tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(again(ids), ours(ids), atol=0, rtol=0)
