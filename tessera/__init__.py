"""Tessera: an inference stack for reasoning, long-context and MoE LLM workloads.

Public API only; importing tessera patches nothing.
"""

from tessera.config import ModelConfig, SamplingParams
from tessera.engine import LLM, Completion, GenerationOutput
from tessera.kv.presses import make_press

__all__ = ["LLM", "Completion", "GenerationOutput", "ModelConfig", "SamplingParams", "make_press"]
__version__ = "0.1.0"
