"""What generation hands back: completions, per-step deltas and statistics."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Completion:
    prompt_ids: list[int]
    token_ids: list[int]
    text: str
    finish_reason: str  # "eos" | "stop" | "length" | "abort"
    #: SamplingParams.logprobs = k: per generated token {token id: log-probability} of the sampled token and
    #: the k most likely ones, under the model's distribution (before temperature, top-k/p and penalties)
    logprobs: list[dict[int, float]] | None = None
    index: int = 0  # which of a prompt's n completions this is


@dataclass
class RequestOutput:
    """What one `StepEngine.step()` produced for one request: at most one new token."""

    request_id: str
    token_ids: list[int]  # new tokens this step (EOS is not output)
    text: str  # new text; the pieces of a request add up to its completion's text (stop strings cut)
    finished: bool = False
    finish_reason: str | None = None
    logprobs: list[dict[int, float]] | None = None  # for the new tokens, when asked for
    completion: Completion | None = None  # set once finished
    sampled: int | None = None  # the token sampled this step (EOS included), for streaming callbacks


@dataclass
class GenerationStats:
    prefill_s: float = 0.0
    decode_s: float = 0.0
    prompt_tokens: int = 0
    generated_tokens: int = 0
    peak_kv_bytes: int = 0
    decode_steps: int = 0
    batch_first_tokens: int = 0  # tokens produced by prefill (one per sequence), not by decode
    #: MoE layers: layer index -> tokens routed to each expert in this call (prefill padding included)
    routing: dict[int, list[int]] = field(default_factory=dict)
    #: what a KV backend did that its options do not say (e.g. ShadowKV prompts that ran dense)
    notes: list[str] = field(default_factory=list)

    @property
    def balancedness(self) -> dict[int, float]:
        """Per MoE layer: mean / max tokens per expert (1.0 even, 1/E all on one expert)."""
        return {i: (sum(c) / len(c)) / max(c) if max(c) else 1.0 for i, c in self.routing.items()}

    @property
    def decode_tokens_per_s(self) -> float:
        return (self.generated_tokens - self.batch_first_tokens) / self.decode_s if self.decode_s else 0.0


@dataclass
class GenerationOutput:
    completions: list[Completion]
    stats: GenerationStats = field(default_factory=GenerationStats)

    @property
    def texts(self) -> list[str]:
        return [c.text for c in self.completions]
