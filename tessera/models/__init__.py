"""Models: one shared decoder (`CausalLM`), a registry of families, and the HF-format loader and saver."""

from tessera.models.decoder import CausalLM, LlamaForCausalLM
from tessera.models.families import FAMILIES, config_from_hf
from tessera.models.loader import load_model, save_model

__all__ = ["FAMILIES", "CausalLM", "LlamaForCausalLM", "config_from_hf", "load_model", "save_model"]
