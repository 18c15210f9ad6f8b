"""MoE models through the engine, the presses, ShadowKV and the CLI (a tiny random Mixtral with the embedded
model's tokenizer, built here)."""

import shutil

import pytest
import torch

from tessera.cli import main
from tessera.config import ModelConfig, SamplingParams
from tessera.engine import LLM
from tessera.engine.engine import DEFAULT_MODEL
from tessera.kv.presses import make_press
from tessera.models import CausalLM, save_model
from tessera.tasks.reasoning import make_problem


@pytest.fixture(scope="module")
def moe_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-moe")
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=499, hidden_size=64, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, head_dim=16, max_position_embeddings=4096, model_type="mixtral",
                      num_experts=4, num_experts_per_tok=2, moe_intermediate_size=48, eos_token_id=2)
    model = CausalLM(cfg)
    with torch.no_grad():
        for b in model.moe_blocks().values():
            b.gate.weight.normal_(0, 1.0)  # routing that depends on the token
    save_model(model, path)
    for f in DEFAULT_MODEL.glob("tokenizer*.json"):
        shutil.copy(f, path)
    shutil.copy(DEFAULT_MODEL / "special_tokens_map.json", path)
    return path


def _prompts():
    return [make_problem(1_000_000 + i, difficulty=3).prompt for i in range(3)]


def test_routing_stats_count_every_routed_token(moe_dir):
    llm = LLM.load(moe_dir)
    out = llm.generate(_prompts(), SamplingParams(max_new_tokens=12, ignore_eos=True))
    st = out.stats
    assert sorted(st.routing) == [0, 1]
    padded_prefill = 3 * max(len(c.prompt_ids) for c in out.completions)
    fed = padded_prefill + sum(len(c.token_ids) - 1 for c in out.completions)  # the last token is not fed back
    assert all(sum(c) == 2 * fed for c in st.routing.values())  # top-2: two routes per token
    assert all(0.25 <= b <= 1.0 for b in st.balancedness.values())


@pytest.mark.parametrize("kv, kw", [("dense", {"press": "rkv"}), ("dense", {"press": "snapkv"}),
                                    ("shadowkv", {"sparse_budget": 4096, "rank": 32}),
                                    ("quest", {"sparse_budget": 4096})])
def test_presses_shadowkv_and_quest_at_a_budget_above_the_length_change_nothing(moe_dir, kv, kw):
    llm = LLM.load(moe_dir)
    sp = SamplingParams(max_new_tokens=24, ignore_eos=True)
    plain = llm.generate(_prompts(), sp)
    if kv == "dense":
        other = llm.generate(_prompts(), sp, press=make_press(kw["press"], budget=4000))
    else:
        other = llm.generate(_prompts(), sp, kv=kv, kv_options=kw)
    assert [c.token_ids for c in other.completions] == [c.token_ids for c in plain.completions]


def test_cli_info_and_stats_show_experts(moe_dir, capsys):
    assert main(["info", "--model", str(moe_dir)]) == 0
    out = capsys.readouterr().out
    assert "experts: 4 per MoE layer (2 of 2 layers), top-2" in out and "active" in out
    assert main(["generate", "--model", str(moe_dir), "--difficulty", "2", "--max-new-tokens", "8", "--stats"]) == 0
    out = capsys.readouterr().out
    assert "layer  0 routing: tokens per expert" in out and "balancedness" in out


def test_cli_quantized_moe(moe_dir, capsys):
    assert main(["generate", "--model", str(moe_dir), "--difficulty", "2", "--max-new-tokens", "8",
                 "--quant", "w8a8"]) == 0
    assert "tok/s" in capsys.readouterr().out


def test_embedded_names_resolve():
    from tessera.engine.engine import EMBEDDED, resolve_model_path

    assert resolve_model_path(None) == DEFAULT_MODEL == EMBEDDED["dense"]
    assert resolve_model_path("moe").name == "tiny-moe-reasoner"
    assert str(resolve_model_path("some/dir")) == "some/dir"


def test_embedded_moe_reasoner_loads_in_transformers():
    # the committed weights, as a user would take them: transformers loads every tensor and agrees with us
    import transformers

    from tessera.engine.engine import resolve_model_path
    from tessera.models import load_model
    from tessera.tokenizer import Tokenizer

    path = resolve_model_path("moe")
    assert (path / "model.safetensors").stat().st_size <= 40e6
    hf, info = transformers.AutoModelForCausalLM.from_pretrained(path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    ids = torch.tensor([Tokenizer(path).encode(make_problem(3).prompt)[:48]])  # [1, 48]
    with torch.no_grad():
        torch.testing.assert_close(load_model(path)(ids), hf.eval()(ids).logits, atol=1e-4, rtol=1e-4)
