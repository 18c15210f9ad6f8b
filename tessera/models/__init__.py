from tessera.models.llama import LlamaForCausalLM
from tessera.models.loader import load_model, save_model

__all__ = ["LlamaForCausalLM", "load_model", "save_model"]
