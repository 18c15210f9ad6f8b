"""Batched generation: right-padded prefill, one-token decode steps, per-sequence stopping.

Sequences that finish leave the batch (their cache rows are dropped), so the remaining ones decode
at the cost of the live batch only. A press (KV compression) is driven through the two hooks of
`tessera.kv.presses.base.Press`; the engine does not know which press it runs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from tessera.config import SamplingParams
from tessera.engine.stopping import StopChecker
from tessera.kv import make_cache
from tessera.kv.cache import StepContext
from tessera.kv.presses import NoPress, Press
from tessera.layers.sampler import make_generators, sample
from tessera.models.decoder import CausalLM

ASSETS = Path(__file__).resolve().parent.parent / "assets"
DEFAULT_MODEL = ASSETS / "tiny-reasoner"
#: names `LLM.load` and `--model` accept for the embedded models, besides a directory
EMBEDDED = {"dense": DEFAULT_MODEL, "moe": ASSETS / "tiny-moe-reasoner"}


def resolve_model_path(path: str | Path | None) -> Path:
    """None -> the embedded dense reasoner; "dense" / "moe" -> an embedded model; anything else: a directory."""
    if path is None:
        return DEFAULT_MODEL
    return EMBEDDED.get(str(path), Path(path))


@dataclass
class Completion:
    prompt_ids: list[int]
    token_ids: list[int]
    text: str
    finish_reason: str  # "eos" | "stop" | "length"


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


#: stream(sequence index, new token id, new text piece)
StreamCallback = Callable[[int, int, str], None]


class LLM:
    """A model, its tokenizer and a device: `LLM.load().generate(["..."], SamplingParams())`."""

    def __init__(self, model: CausalLM, tokenizer=None):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.config = model.config
        p = next(model.parameters())
        self.device, self.dtype = p.device, p.dtype

    @classmethod
    def load(cls, path: str | Path | None = None, device: str = "cpu", dtype: torch.dtype | None = None) -> LLM:
        from tessera.models.loader import load_model
        from tessera.tokenizer import Tokenizer

        path = resolve_model_path(path)
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise RuntimeError(f"device {device!r} requested but torch sees no CUDA device")
        if dtype is None:
            dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
        model = load_model(path, device=device, dtype=dtype)
        tok = Tokenizer(path) if (path / "tokenizer.json").is_file() else None
        return cls(model, tok)

    # ---------------------------------------------------------------------------------------
    def _encode(self, prompts) -> list[list[int]]:
        if isinstance(prompts, (str, bytes)) or (prompts and isinstance(prompts[0], int)):
            prompts = [prompts]
        if not prompts:
            raise ValueError("no prompts given")
        out = []
        for i, p in enumerate(prompts):
            if isinstance(p, str):
                if self.tokenizer is None:
                    raise ValueError("this model has no tokenizer: pass token ids instead of text")
                if not p.strip():
                    raise ValueError(f"prompt {i} is empty")
                ids = self.tokenizer.encode(p)
            else:
                ids = [int(t) for t in p]
            if not ids:
                raise ValueError(f"prompt {i} is empty")
            if max(ids) >= self.config.vocab_size or min(ids) < 0:
                raise ValueError(f"prompt {i} has token ids outside [0, {self.config.vocab_size})")
            if len(ids) >= self.config.max_position_embeddings:
                raise ValueError(
                    f"prompt {i} has {len(ids)} tokens; the model's maximum is "
                    f"{self.config.max_position_embeddings} positions, which leaves no room to generate"
                )
            out.append(ids)
        return out

    def _decode_text(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids) if self.tokenizer is not None else ""

    @torch.inference_mode()
    def generate(
        self,
        prompts,
        sampling: SamplingParams | None = None,
        press: Press | None = None,
        stream: StreamCallback | None = None,
        kv: str = "dense",
        kv_options: dict | None = None,
    ) -> GenerationOutput:
        """Generate for a batch of prompts (texts or token-id lists).

        `press` compresses the KV cache during decoding; `kv` names the cache backend
        (`tessera.kv.KV_BACKENDS`: "dense", and e.g. "shadowkv" when registered) with `kv_options`.
        """
        sp = sampling or SamplingParams()
        press = press or NoPress()
        press.validate(self.config.max_position_embeddings)
        ids = self._encode(prompts)
        n, cfg, dev = len(ids), self.config, self.device
        stats = GenerationStats(prompt_tokens=sum(map(len, ids)))
        # the heads this process holds (fewer than the config's under tensor parallelism)
        lay = self.model.kv_layout()
        local = replace(cfg, num_attention_heads=lay.num_heads, num_key_value_heads=lay.num_kv_heads)
        cache = make_cache(kv, local, n, self.dtype, dev, press, **(kv_options or {}))
        moe = self.model.moe_blocks()
        for block in moe.values():
            block.stats.reset()
        eos = set() if sp.ignore_eos else set(cfg.eos_ids) | ({self.tokenizer.eos_id} if self.tokenizer and self.tokenizer.eos_id is not None else set())
        stops = [StopChecker(sp, eos, self._decode_text) for _ in range(n)]
        gens = make_generators(sp, n, dev)
        max_len = cfg.max_position_embeddings

        # ---- prefill (right-padded) -------------------------------------------------------
        t0 = time.perf_counter()
        lens = torch.tensor([len(x) for x in ids], device=dev)
        S = int(lens.max())
        inp = torch.zeros(n, S, dtype=torch.long, device=dev)
        for i, x in enumerate(ids):
            inp[i, : len(x)] = torch.tensor(x, device=dev)
        pos = torch.arange(S, device=dev).expand(n, S)
        ctx = StepContext(positions=pos, new_lens=lens, is_prefill=True)
        logits = self.model(inp, pos, cache, ctx, logits_index=lens - 1)[:, -1]  # [n, V]
        active = list(range(n))  # batch row -> sequence index
        seq_pos = lens.clone()  # logical position of each row's next token
        decoded = torch.zeros(n, dtype=torch.long, device=dev)
        press.after_prefill(cache, decoded)
        tok = sample(logits, sp, gens, active)
        stats.prefill_s = time.perf_counter() - t0
        stats.batch_first_tokens = n

        # ---- decode -----------------------------------------------------------------------
        t0 = time.perf_counter()
        while True:
            keep = []
            for row, s in enumerate(active):
                t = int(tok[row])
                piece = stops[s].push(t)
                if stream is not None and piece is not None:
                    stream(s, t, piece)
                if not stops[s].done and int(seq_pos[row]) >= max_len:
                    stops[s].finish("length")
                if not stops[s].done:
                    keep.append(row)
            stats.peak_kv_bytes = max(stats.peak_kv_bytes, cache.nbytes())
            if len(keep) < len(active):
                if not keep:
                    break
                rows = torch.tensor(keep, device=dev)
                cache.select(rows)
                active = [active[r] for r in keep]
                tok, seq_pos, decoded = tok[rows], seq_pos[rows], decoded[rows]
            pos = seq_pos[:, None]
            ctx = StepContext(positions=pos, new_lens=torch.ones_like(seq_pos), is_prefill=False)
            logits = self.model(tok[:, None], pos, cache, ctx)[:, -1]
            seq_pos, decoded = seq_pos + 1, decoded + 1
            press.after_decode(cache, decoded)
            tok = sample(logits, sp, gens, active)
            stats.decode_steps += 1
        stats.decode_s = time.perf_counter() - t0
        comps = [Completion(ids[i], st.tokens, st.text(), st.reason) for i, st in enumerate(stops)]
        stats.generated_tokens = sum(len(c.token_ids) for c in comps)
        stats.routing = {i: block.stats.counts.tolist() for i, block in moe.items()}
        return GenerationOutput(comps, stats)
