"""Per-sequence stopping: EOS, stop strings, max new tokens; incremental text for streaming."""

from __future__ import annotations

from collections.abc import Callable

from tessera.config import SamplingParams


class StopChecker:
    def __init__(self, sp: SamplingParams, eos_ids: set[int], decode: Callable[[list[int]], str]):
        self.sp, self.eos, self.decode = sp, eos_ids, decode
        self.tokens: list[int] = []
        self.reason: str | None = None
        self._text = ""  # decoded text so far, built incrementally (vLLM-style offsets)
        self._po = self._ro = 0  # prefix / read offsets into self.tokens
        self._tail = max((len(s) for s in sp.stop), default=0)
        self._sent = 0  # characters handed out by stream_delta

    @property
    def done(self) -> bool:
        return self.reason is not None

    def finish(self, reason: str) -> None:
        self.reason = self.reason or reason

    def push(self, token: int) -> str | None:
        """Record one sampled token; returns the new text piece (None once finished)."""
        if self.done:
            return None
        if token in self.eos:
            self.finish("eos")
            return ""
        self.tokens.append(token)
        # decode a short window only: O(1) per token instead of re-decoding the whole sequence
        prefix = self.decode(self.tokens[self._po : self._ro])
        full = self.decode(self.tokens[self._po :])
        piece = ""
        if not full.endswith("\ufffd"):  # an incomplete UTF-8 sequence waits for its next byte
            piece = full[len(prefix) :]
            self._po, self._ro = self._ro, len(self.tokens)
        self._text += piece
        if self.sp.stop:
            # only the tail can hold a stop string that was not there one token ago
            window = self._text[-(self._tail + len(piece) + 1):]
            if any(s in window for s in self.sp.stop):
                self.finish("stop")
        if not self.done and len(self.tokens) >= self.sp.max_new_tokens:
            self.finish("length")
        return piece

    def text(self) -> str:
        t = self.decode(self.tokens)
        if self.reason == "stop":  # cut at the first stop string, which is not part of the output
            t = t[: min(t.find(s) for s in self.sp.stop if s in t)]
        return t

    def stream_delta(self) -> str:
        """The text to stream now. While running, the last (longest stop string - 1) characters are held
        back, since they may start a stop string that is not part of the output; once finished, the rest of
        `text()`. So the pieces add up to `text()` exactly (vLLM's detokenizer holds back the same way)."""
        full = self.text() if self.done else self._text[: max(0, len(self._text) - max(0, self._tail - 1))]
        piece = full[self._sent :]
        self._sent = max(self._sent, len(full))
        return piece
