"""Our dense decoder reproduces transformers' logits for tiny random Llama/Qwen2/Qwen3/Mistral."""

import pytest
import torch
import transformers

from tessera.models import load_model

FAMILIES = {
    "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM, {}),
    "llama3-scaled-tied": (transformers.LlamaConfig, transformers.LlamaForCausalLM, {
        "tie_word_embeddings": True,
        "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 64},
    }),
    "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM, {}),
    "qwen3": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM, {}),
    "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM, {"sliding_window": None}),
}


def tiny_hf_model(family: str, tmp_path, **over):
    cfg_cls, model_cls, extra = FAMILIES[family]
    kw = dict(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, head_dim=16, max_position_embeddings=256, rope_theta=10000.0,
              rms_norm_eps=1e-6, tie_word_embeddings=False)
    kw.update(extra)
    kw.update(over)
    torch.manual_seed(0)
    cfg = cfg_cls(**kw)
    m = model_cls(cfg).eval()
    with torch.no_grad():  # random biases too (HF inits them to zero), so a missing bias would show
        for name, p in m.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.5)
    m.save_pretrained(tmp_path)
    return m


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_logits_match_transformers(family, tmp_path):
    hf = tiny_hf_model(family, tmp_path)
    ours = load_model(tmp_path)
    ids = torch.randint(0, 97, (2, 160), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = hf(ids).logits
        got = ours(ids)
    assert got.shape == ref.shape
    torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)


def test_qwen2_bias_is_used(tmp_path):
    tiny_hf_model("qwen2", tmp_path)
    ours = load_model(tmp_path)
    assert ours.model.layers[0].self_attn.q_proj.bias is not None


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a directory"):
        load_model(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_model(tmp_path)
    tiny_hf_model("llama", tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load_model(tmp_path)


def test_shape_mismatch_is_clear(tmp_path):
    import json

    tiny_hf_model("llama", tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["intermediate_size"] = 128
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="shape mismatch"):
        load_model(tmp_path)


def test_unknown_architecture(tmp_path):
    import json

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}))
    with pytest.raises(ValueError, match="unsupported model_type .gpt2.; supported: llama"):
        load_model(tmp_path)
