"""The OpenAI request bodies this server reads, their translation into engine settings, and the
OpenAI error shape (`{"error": {"message", "type", "param", "code"}}`).

Fields follow the OpenAI API reference for /v1/completions and /v1/chat/completions; unknown fields are
ignored, as vLLM's server does. KV settings per request are extra fields (the `openai` client's
`extra_body`): `press` (a registered press name), `press_options` or the shorthands `budget`, `buffer`,
`window`, `kv` (a KV backend name) and `kv_options`; `top_k`, `repetition_penalty` and `ignore_eos`
are vLLM's extensions.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from tessera.config import SamplingParams


class APIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class _Common(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str
    max_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    n: int = 1
    stream: bool = False
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    # vLLM's extensions
    top_k: int = 0
    repetition_penalty: float = 1.0
    ignore_eos: bool = False
    # KV settings per request
    press: str = "none"
    press_options: dict[str, Any] = Field(default_factory=dict)
    budget: int | None = None
    buffer: int | None = None
    window: int | None = None
    kv: str = "dense"
    kv_options: dict[str, Any] = Field(default_factory=dict)

    def press_kwargs(self) -> dict:
        kw = dict(self.press_options)
        kw.update({k: getattr(self, k) for k in ("budget", "buffer", "window") if getattr(self, k) is not None})
        return kw

    def sampling(self, default_max_tokens: int) -> SamplingParams:
        if self.n != 1:
            raise APIError(400, f"only n=1 is supported, got n={self.n}", "n")
        kw = dict(max_new_tokens=self.max_tokens if self.max_tokens is not None else default_max_tokens,
                  temperature=self.temperature, top_p=self.top_p, top_k=self.top_k, seed=self.seed,
                  stop=self.stop or (), ignore_eos=self.ignore_eos, presence_penalty=self.presence_penalty,
                  frequency_penalty=self.frequency_penalty, repetition_penalty=self.repetition_penalty)
        try:
            return SamplingParams(**kw)
        except (TypeError, ValueError) as e:
            param = next((k for k in kw if str(e).startswith(k)), None)
            raise APIError(400, str(e).replace("max_new_tokens", "max_tokens"),
                           "max_tokens" if param == "max_new_tokens" else param) from e


class CompletionRequest(_Common):
    prompt: str | list[int] | list[str] | list[list[int]]
    logprobs: int | None = None
    echo: bool = False


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):  # content parts: only text parts exist for this server
            if any(p.get("type") != "text" for p in self.content):
                raise APIError(400, "only text content parts are supported", "messages")
            return "".join(str(p.get("text", "")) for p in self.content)
        return self.content or ""


class ChatCompletionRequest(_Common):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = None
    logprobs: bool = False

    def sampling(self, default_max_tokens: int) -> SamplingParams:
        if self.max_tokens is None and self.max_completion_tokens is not None:
            self.max_tokens = self.max_completion_tokens
        return super().sampling(default_max_tokens)
