"""MoE building blocks: expert backends against the loop reference, the Triton grouped GEMM against its
torch reference (interpreted), routing statistics, layer halves, the family registry and loader errors."""

import json

import pytest
import torch

from tessera.config import ModelConfig
from tessera.kernels.moe.grouped_gemm import grouped_gemm, grouped_gemm_ref
from tessera.layers import experts as X
from tessera.layers.moe import MoEBlock, RoutingStats, load_balancing_loss
from tessera.models import CausalLM, config_from_hf, load_model, save_model

MOE_CFG = ModelConfig(vocab_size=50, hidden_size=32, intermediate_size=24, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=8, model_type="mixtral",
                      num_experts=5, num_experts_per_tok=2, moe_intermediate_size=24)


def _routing(T, k, E, seed, drop=False, one_expert=False):
    g = torch.Generator().manual_seed(seed)
    ids = torch.stack([torch.randperm(E, generator=g)[:k] for _ in range(T)]) if T else torch.zeros(0, k).long()
    if one_expert:
        ids[:, 0] = 3
        ids[:, 1:] = (ids[:, 1:] % 3)  # never 3 again in the same row
    if drop and T:
        ids[::3, -1] = -1
    return ids, torch.rand(T, k, generator=g)


@pytest.mark.parametrize("backend", ["sorted", "grouped_mm", "triton", "gathered"])
@pytest.mark.parametrize("T,drop,one_expert", [(13, False, False), (9, True, False), (7, False, True), (0, False, False)])
def test_expert_backends_match_the_loop(backend, T, drop, one_expert):
    E, H, ffn, k = 5, 12, 20, 2
    g = torch.Generator().manual_seed(0)
    x = torch.randn(T, H, generator=g)
    gate_up, down = torch.randn(E, 2 * ffn, H, generator=g), torch.randn(E, H, ffn, generator=g)
    ids, w = _routing(T, k, E, 1, drop, one_expert)
    ref = X.experts_loop(x, ids, w, gate_up, down)
    torch.testing.assert_close(X.run(backend, x, ids, w, gate_up, down), ref, atol=1e-4, rtol=1e-5)


def test_compiled_graphs_gather_few_pairs_and_group_many():
    """`use_gathered`: small experts (cache-resident) up to 64 pairs, large ones up to 4 pairs an expert."""
    small = torch.empty(8, 512, 256, device="meta"), torch.empty(8, 256, 256, device="meta")  # 6 MB
    large = torch.empty(8, 7168, 1024, device="meta"), torch.empty(8, 1024, 3584, device="meta")  # 352 MB
    assert X.use_gathered(64, *small) and not X.use_gathered(65, *small)
    assert X.use_gathered(32, *large) and not X.use_gathered(33, *large)


def test_capacity_backend_is_exact_when_nothing_overflows_and_drops_past_capacity():
    E, H, ffn = 4, 6, 10
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, H, generator=g)
    gate_up, down = torch.randn(E, 2 * ffn, H, generator=g), torch.randn(E, H, ffn, generator=g)
    ids, w = _routing(8, 2, E, 3)
    ref = X.experts_loop(x, ids, w, gate_up, down)
    torch.testing.assert_close(X.experts_capacity(x, ids, w, gate_up, down, capacity_factor=4.0), ref)
    ids[:, 0] = 0  # expert 0 gets at least 8 pairs; capacity 1.0 gives every expert 4 slots
    got = X.experts_capacity(x, ids, w, gate_up, down, capacity_factor=1.0)
    dropped, seen = ids.clone(), [0] * E
    for t in range(8):  # the first 4 pairs of each expert in (token, slot) order are kept
        for j in range(2):
            seen[int(ids[t, j])] += 1
            if seen[int(ids[t, j])] > 4:
                dropped[t, j] = -1
    assert (dropped < 0).any()
    torch.testing.assert_close(got, X.experts_loop(x, dropped, w, gate_up, down))


def test_unknown_backend_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown experts backend 'nope'"):
        X.run("nope", torch.zeros(1, 2), torch.zeros(1, 1, dtype=torch.long), torch.ones(1, 1),
              torch.zeros(1, 2, 2), torch.zeros(1, 2, 1))


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_grouped_gemm_kernel_matches_reference(dtype, tol):
    g = torch.Generator().manual_seed(4)
    offsets = torch.tensor([0, 0, 17, 18, 18, 50])  # empty experts, a 1-row expert, non-tile-multiple counts
    a = torch.randn(50, 40, generator=g).to(dtype)
    w = torch.randn(5, 37, 40, generator=g).to(dtype)
    torch.testing.assert_close(grouped_gemm(a, w, offsets).float(), grouped_gemm_ref(a, w, offsets).float(),
                               atol=tol * 10, rtol=tol)
    with pytest.raises(ValueError, match="offsets"):
        grouped_gemm(a, w, torch.tensor([0, 1, 2, 3, 4, 5]))


def test_permutation_groups_rows_by_expert_and_drops_negative_ids():
    ids = torch.tensor([[2, 0], [2, -1], [1, 2]])
    p = X.permute(ids, torch.ones(3, 2), 3)
    assert p.offsets.tolist() == [0, 1, 2, 5]
    assert p.token.tolist() == [0, 2, 0, 1, 2]


def test_routing_stats_and_balancedness():
    s = RoutingStats(4)
    s.add(torch.tensor([[0, 1], [0, 2], [0, 3]]))
    assert s.counts.tolist() == [3, 1, 1, 1]
    assert s.balancedness() == pytest.approx(1.5 / 3)
    s.reset()
    assert s.balancedness() == 1.0


def test_load_balancing_loss_is_one_when_even_and_larger_when_collapsed():
    even = torch.zeros(8, 4)
    even[torch.arange(8), torch.arange(8) % 4] = 5.0
    collapsed = torch.zeros(8, 4)
    collapsed[:, 0] = 5.0
    assert load_balancing_loss(even, 1).item() == pytest.approx(1.0, abs=0.05)
    assert load_balancing_loss(collapsed, 1).item() > 2.5


def test_moe_block_records_routes_only_in_eval():
    torch.manual_seed(0)
    block = MoEBlock(MOE_CFG)
    block.train()
    block(torch.randn(1, 6, 32))
    assert block.stats.counts.sum() == 0 and block.last_router_logits.shape == (6, 5)
    block.eval()
    block(torch.randn(1, 6, 32))
    assert block.stats.counts.sum() == 6 * 2 and block.last_router_logits is None


def test_model_half_by_half_is_bitwise_the_forward():
    torch.manual_seed(0)
    m = CausalLM(MOE_CFG).eval()
    ids = torch.randint(0, 50, (2, 11))
    with torch.no_grad():
        ref = m(ids)
        x, step = m.embed(ids)
        for layer in m.model.layers:
            x = layer.attention_half(x, step)
            x = layer.ffn_half(x)
        got = m.logits(x)
    assert torch.equal(got, ref)
    assert m.kv_layout().num_kv_heads == 2 and sorted(m.moe_blocks()) == [0, 1]
    per_expert = 2 * 24 * 32 + 32 * 24
    assert m.num_parameters() - m.num_active_parameters() == 2 * (5 - 2) * per_expert


def test_config_spellings_and_layer_mix():
    base = dict(vocab_size=10, hidden_size=8, intermediate_size=16, num_hidden_layers=4, num_attention_heads=2)
    for key in ("num_local_experts", "num_experts", "n_routed_experts"):
        c = config_from_hf({**base, "model_type": "qwen3_moe", key: 4, "num_experts_per_tok": 2,
                            "moe_intermediate_size": 6, "mlp_only_layers": [0], "decoder_sparse_step": 1})
        assert c.num_experts == 4 and c.moe_intermediate_size == 6 and c.qk_norm == "head"
        assert [c.is_moe_layer(i) for i in range(4)] == [False, True, True, True]
    c = config_from_hf({**base, "model_type": "qwen2_moe", "num_experts": 4, "num_experts_per_tok": 1,
                        "moe_intermediate_size": 6, "decoder_sparse_step": 2})
    assert [c.is_moe_layer(i) for i in range(4)] == [False, True, False, True] and c.attention_bias
    assert not config_from_hf({**base, "model_type": "llama"}).num_experts


def test_unknown_family_and_bad_configs_are_clear_errors():
    base = dict(vocab_size=10, hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2)
    with pytest.raises(ValueError, match="unsupported model_type 'gpt2'; supported: llama, mistral, mixtral"):
        config_from_hf({**base, "model_type": "gpt2"})
    with pytest.raises(ValueError, match="num_experts_per_tok=5 must be in"):
        config_from_hf({**base, "model_type": "mixtral", "num_local_experts": 4, "num_experts_per_tok": 5})
    with pytest.raises(ValueError, match="must hold a JSON object"):
        config_from_hf([1, 2])
    with pytest.raises(ValueError, match="'hidden_size' must be an integer"):
        config_from_hf({**base, "hidden_size": "8"})


def test_save_refuses_a_config_its_family_cannot_express(tmp_path):
    from dataclasses import replace

    with pytest.raises(ValueError, match="cannot express this model: moe_intermediate_size"):
        save_model(CausalLM(replace(MOE_CFG, moe_intermediate_size=16)), tmp_path)


def test_missing_expert_tensor_is_named(tmp_path):
    from safetensors.torch import load_file, save_file

    torch.manual_seed(0)
    save_model(CausalLM(MOE_CFG), tmp_path)
    state = load_file(str(tmp_path / "model.safetensors"))
    assert "model.layers.0.block_sparse_moe.experts.4.w2.weight" in state  # Mixtral's layout on disk
    del state["model.layers.1.block_sparse_moe.experts.3.w3.weight"]
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match=r"lacks expert tensor 'model.layers.1.block_sparse_moe.experts.3.w3.weight'"):
        load_model(tmp_path)


def test_sharded_checkpoint_with_fused_experts_loads(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    m = CausalLM(MOE_CFG).eval()
    save_model(m, tmp_path)
    state = {k: v.contiguous() for k, v in m.state_dict().items()}  # the fused layout transformers 5 holds
    names = sorted(state)
    half = len(names) // 2
    (tmp_path / "model.safetensors").unlink()
    index = {}
    for shard, part in (("a.safetensors", names[:half]), ("b.safetensors", names[half:])):
        save_file({k: state[k] for k in part}, str(tmp_path / shard))
        index.update({k: shard for k in part})
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": index}))
    ids = torch.randint(0, 50, (1, 7))
    with torch.no_grad():
        assert torch.equal(load_model(tmp_path)(ids), m(ids))


def test_deepseek_v3_block_matches_transformers():
    import transformers
    from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3MoE

    from tessera.layers.moe_deepseek import DeepSeekMoEBlock

    cfg = transformers.DeepseekV3Config(hidden_size=32, moe_intermediate_size=16, n_routed_experts=8,
                                        num_experts_per_tok=3, n_shared_experts=2, n_group=4, topk_group=2,
                                        routed_scaling_factor=2.5, norm_topk_prob=True)
    torch.manual_seed(0)
    ref = DeepseekV3MoE(cfg).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.normal_(0, 0.3)
        ref.gate.e_score_correction_bias.normal_(0, 0.5)  # big enough to change choices
    ours = DeepSeekMoEBlock(32, 8, 3, 16, n_shared=2, n_group=4, topk_group=2, scaling=2.5).eval()
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(2, 7, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), atol=1e-5, rtol=1e-5)
        _, w, ids = ours.gate(x.reshape(-1, 32))
        _, w_ref, ids_ref = ref.gate(x.reshape(-1, 32))
    assert torch.equal(ids.sort(-1).values, ids_ref.sort(-1).values)


@pytest.mark.parametrize("scheme", ["w8a8", "w4a8"])
def test_quantized_moe_model_uses_int_experts_and_stays_close(scheme):
    from dataclasses import replace

    from tessera.quant import quantize_model
    from tessera.quant.experts import LinearExperts, split_experts
    from tessera.quant.linear import Int4Linear, Int8Linear

    torch.manual_seed(0)
    cfg = replace(MOE_CFG, model_type="qwen2_moe", moe_intermediate_size=32, shared_expert_intermediate_size=32,
                  norm_topk_prob=False)  # int4 groups of 32 along every K
    ref = CausalLM(cfg).eval()
    ids = torch.randint(0, 50, (2, 9))
    with torch.no_grad():
        want = ref(ids)
        split = CausalLM(cfg).eval()
        split.load_state_dict(ref.state_dict())
        split_experts(split)  # same numbers, per-expert linears: the same logits up to summation order
        torch.testing.assert_close(split(ids), want, atol=1e-5, rtol=1e-5)
        quantize_model(ref, scheme, group=32)
        experts = ref.model.layers[0].mlp.experts
        assert isinstance(experts, LinearExperts)
        assert isinstance(experts.gate_up[0], Int8Linear if scheme == "w8a8" else Int4Linear)
        assert type(ref.model.layers[0].mlp.shared_expert_gate) is torch.nn.Linear  # skipped by default
        got = ref(ids)
    assert (got - want).abs().max() < 0.05 * want.abs().max()
