from tessera.engine.engine import LLM, Completion, GenerationOutput, GenerationStats
from tessera.engine.outputs import RequestOutput
from tessera.engine.step_engine import StepEngine

__all__ = ["LLM", "Completion", "GenerationOutput", "GenerationStats", "RequestOutput", "StepEngine"]
