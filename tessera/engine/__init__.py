from tessera.engine.engine import LLM, Completion, GenerationOutput, GenerationStats

__all__ = ["LLM", "Completion", "GenerationOutput", "GenerationStats"]
