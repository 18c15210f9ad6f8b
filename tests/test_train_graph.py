"""The training forward (no cache) must trace as one graph under `torch.compile(dynamic=True)`: a graph
break at attention once made every layer a separate graph and the model's layer loop run eagerly
(scripts/train_tiny.py compiles the model this way; 5-12% per step on a fixed-shape probe, not seen in a full
run: docs/moe.md)."""

import pytest
import torch

from tessera.config import ModelConfig
from tessera.models import CausalLM

MOE = dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32)
LAYOUTS = {  # scripts/train_tiny.py's --arch dense, and --arch moe with each --moe-layout
    "dense": {},
    "mixtral": dict(MOE, model_type="mixtral"),  # every layer routed
    "dense0": dict(MOE, model_type="qwen2_moe", mlp_only_layers=(0,), norm_topk_prob=True),  # a dense layer 0
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_training_forward_has_no_graph_break(layout):
    torch.manual_seed(0)
    extra = LAYOUTS[layout]
    cfg = ModelConfig(vocab_size=61, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, head_dim=8, max_position_embeddings=64, **extra)
    model = CausalLM(cfg)
    for b in model.moe_blocks().values():
        b.experts.backend = "capacity"  # what training uses: static shapes
    ids = torch.randint(0, 61, (2, 12))  # [B, T]
    torch._dynamo.mark_dynamic(ids, 1)  # a symbolic sequence length, as compile(dynamic=True) gives
    torch._dynamo.reset()
    explained = torch._dynamo.explain(model)(ids)
    assert explained.graph_break_count == 0, [str(b.reason)[:200] for b in explained.break_reasons]
