import os

import pytest
import torch

# Triton kernels run under the interpreter on CPU-only machines (CI has no GPU).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def _tiny_llm(max_positions: int):
    from tessera.config import ModelConfig
    from tessera.engine import LLM
    from tessera.models import LlamaForCausalLM

    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=61, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                      max_position_embeddings=max_positions, eos_token_id=2)
    return LLM(LlamaForCausalLM(cfg))


@pytest.fixture(scope="session")
def tiny_llm():
    """Factory: a tiny random Llama-family engine (2 layers, GQA 4/2, eos 2) with N positions."""
    return _tiny_llm
