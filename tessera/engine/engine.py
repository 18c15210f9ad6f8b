"""The Python API: `LLM` loads a model and generates, vLLM-shaped.

    llm = LLM(model="path")            # or LLM.load("dense" | "moe" | path), or LLM(a CausalLM)
    llm.generate(prompts, SamplingParams(max_tokens=64, n=2, logprobs=3))
    llm.chat([{"role": "user", "content": "..."}])
    for piece in llm.stream(prompt): ...

Every call is a loop over the step-level engine (`step_engine.py`): the requests are added, then stepped
until they finish, so a call of many prompts batches them continuously (finished sequences leave the
batch at once; with `kv_cap_bytes`, the ones that do not fit wait for memory). A press (KV compression)
is driven through the two hooks of `tessera.kv.presses.base.Press`; the engine does not know which press
it runs.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import nn

from tessera.config import SamplingParams
from tessera.engine.chat import check_messages, load_template, render
from tessera.engine.compiled_decode import CompiledDecode
from tessera.engine.outputs import Completion, GenerationOutput, GenerationStats
from tessera.engine.step_engine import StepEngine
from tessera.kv.presses import Press
from tessera.models.decoder import CausalLM

__all__ = ["LLM", "Completion", "GenerationOutput", "GenerationStats", "resolve_model_path"]

ASSETS = Path(__file__).resolve().parent.parent / "assets"
DEFAULT_MODEL = ASSETS / "tiny-reasoner"
#: names `LLM.load` and `--model` accept for the embedded models, besides a directory
EMBEDDED = {"dense": DEFAULT_MODEL, "moe": ASSETS / "tiny-moe-reasoner"}


def resolve_model_path(path: str | Path | None) -> Path:
    """None -> the embedded dense reasoner; "dense" / "moe" -> an embedded model; anything else: a directory."""
    if path is None:
        return DEFAULT_MODEL
    return EMBEDDED.get(str(path), Path(path))


#: stream(sequence index, sampled token id, new text piece); the pieces of a sequence add up to its text
StreamCallback = Callable[[int, int, str], None]


def _load(path, device: str, dtype):
    from tessera.models.loader import load_model
    from tessera.tokenizer import Tokenizer

    path = resolve_model_path(path)
    if not isinstance(device, str):
        raise TypeError(f"device must be a string such as 'cpu' or 'cuda', got {device!r}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} requested but torch sees no CUDA device")
    if dtype is None:
        dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    model = load_model(path, device=device, dtype=dtype)
    tok = Tokenizer(path) if (path / "tokenizer.json").is_file() else None
    return model, tok, path


class LLM:
    """A model, its tokenizer and a device: `LLM(model="path").generate(["..."], SamplingParams())`.

    `model` is a `CausalLM`, a checkpoint directory, or an embedded model's name ("dense", "moe"; None:
    "dense"). `kv_cap_bytes` caps the KV memory the requests of one call can grow to (None: no cap).
    `compile=True` runs decode steps through one `torch.compile` graph whenever the running batch allows it
    (`tessera.engine.compiled_decode`): faster steps after a one-time compile of tens of seconds.
    """

    def __init__(self, model: CausalLM | str | Path | None = None, tokenizer=None, *, device: str = "cpu",
                 dtype: torch.dtype | None = None, kv_cap_bytes: int | None = None, compile: bool = False):
        self.path: Path | None = None
        if model is None or isinstance(model, (str, Path)):
            model, tokenizer, self.path = _load(model, device, dtype)
        elif not isinstance(model, nn.Module):
            raise TypeError(f"model must be a CausalLM, a checkpoint directory or an embedded model's name, "
                            f"got {type(model).__name__}")
        if kv_cap_bytes is not None:
            _check_int("kv_cap_bytes", kv_cap_bytes, 1)
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.config = model.config
        self.kv_cap_bytes = kv_cap_bytes
        p = next(model.parameters())
        self.device, self.dtype = p.device, p.dtype
        self.compiled = CompiledDecode(self.model) if compile else None  # compiles lazily, on the first step

    @classmethod
    def load(cls, path: str | Path | None = None, device: str = "cpu", dtype: torch.dtype | None = None,
             compile: bool = False) -> LLM:
        return cls(Path(path) if isinstance(path, str) and path not in EMBEDDED else path, device=device, dtype=dtype,
                   compile=compile)

    def compile_now(self, batch_sizes=(1, 2)) -> None:
        """With `compile=True`: compile the decode step's graphs now rather than in the first request's steps,
        by one short generation per batch size (1 has its own graph; every size from 2 up shares one)."""
        if self.compiled is None:
            raise RuntimeError("compile_now: this LLM was made without compile=True")
        for n in batch_sizes:
            self.generate([[self.config.bos_token_id or 1]] * n, SamplingParams(max_new_tokens=3, ignore_eos=True))

    # ---- the step engine ----------------------------------------------------------------------
    def engine(self, kv_cap_bytes: int | None = None, max_running: int | None = None) -> StepEngine:
        """A fresh step-level engine over this model (add_request / step / abort)."""
        return StepEngine(self.model, self._decode_text, self.eos_ids, kv_cap_bytes or self.kv_cap_bytes,
                          max_running, self.compiled)

    @property
    def eos_ids(self) -> set[int]:
        tok_eos = {self.tokenizer.eos_id} if self.tokenizer and self.tokenizer.eos_id is not None else set()
        return set(self.config.eos_ids) | tok_eos

    def encode(self, prompts) -> list[list[int]]:
        """Prompts (one text, one token-id list, or a list of them) -> token-id lists, checked."""
        if isinstance(prompts, str) or (isinstance(prompts, (list, tuple)) and prompts
                                        and _is_token(prompts[0])):
            prompts = [prompts]
        if not isinstance(prompts, (list, tuple)):
            raise TypeError(f"prompts must be a string, a list of token ids, or a list of those; got "
                            f"{type(prompts).__name__}")
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
            elif isinstance(p, (list, tuple)) and all(_is_token(t) for t in p):
                ids = [int(t) for t in p]
            else:
                raise TypeError(f"prompts[{i}] must be a string or a list of int token ids, got {p!r:.80}")
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

    _encode = encode  # the name callers used before

    def _decode_text(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids) if self.tokenizer is not None else ""

    # ---- generate ---------------------------------------------------------------------------
    def generate(
        self,
        prompts,
        sampling: SamplingParams | list[SamplingParams] | None = None,
        press: Press | None = None,
        stream: StreamCallback | None = None,
        kv: str = "dense",
        kv_options: dict | None = None,
        *,
        sampling_params: SamplingParams | list[SamplingParams] | None = None,
        use_tqdm: bool = False,
    ) -> GenerationOutput:
        """Generate for prompts (texts or token-id lists); `n` completions per prompt, prompt-major.

        `sampling` (vLLM: `sampling_params`) is one SamplingParams or one per prompt. `press` compresses
        the KV cache during decoding (an object from `make_press`); `kv` names the cache backend
        (`tessera.kv.KV_BACKENDS`: "dense", "shadowkv", "quest") with `kv_options`. `use_tqdm` shows a
        progress bar. Wrong types raise TypeError, bad values ValueError, naming the argument.
        """
        if sampling is not None and sampling_params is not None:
            raise TypeError("give sampling or sampling_params, not both")
        ids = self.encode(prompts)
        params = _check_generate_args(len(ids), sampling if sampling is not None else sampling_params, press,
                                      stream, kv, kv_options, use_tqdm)
        engine = self.engine()
        moe = self.model.moe_blocks()
        for block in moe.values():
            block.stats.reset()
        sample_index = [j for sp in params for j in range(sp.n)]  # flat request k -> its index in its prompt
        n_total = len(sample_index)
        k = 0
        for p, sp in zip(ids, params):
            for _ in range(sp.n):
                # the sample's index within its prompt seeds it, as in vLLM: a seeded request samples the same
                # tokens alone or beside any other prompts
                engine.add_request(p, sp, press, kv, kv_options, request_id=str(k), index=sample_index[k])
                k += 1
        comps: list[Completion | None] = [None] * n_total
        bar = _progress(use_tqdm, n_total)
        with torch.inference_mode():
            while engine.has_unfinished():
                for o in engine.step():
                    i = int(o.request_id)
                    if stream is not None:
                        stream(i, o.sampled, o.text)
                    if o.finished:
                        comps[i] = o.completion
                        comps[i].index = sample_index[i]
                        if bar is not None:
                            bar.update(1)
        if bar is not None:
            bar.close()
        stats = engine.stats
        stats.routing = {i: block.stats.counts.tolist() for i, block in moe.items()}
        if kv == "shadowkv":
            from tessera.kv.shadowkv.notes import shadowkv_notes

            stats.notes = shadowkv_notes(kv_options or {}, [len(p) for p in ids])
        return GenerationOutput(comps, stats)

    def stream(self, prompt, sampling: SamplingParams | None = None, press: Press | None = None,
               kv: str = "dense", kv_options: dict | None = None) -> Iterator[str]:
        """`for piece in llm.stream(prompt): ...`: the text of one completion, piece by piece (the pieces add
        up to the completion's text). Stopping the iteration early frees the request's KV."""
        ids = self.encode(prompt)
        if len(ids) != 1:
            raise ValueError(f"stream takes one prompt, got {len(ids)}")
        (sp,) = _check_generate_args(1, sampling, press, None, kv, kv_options, False)
        if sp.n != 1:
            raise ValueError(f"stream yields one completion: n must be 1, got {sp.n}")
        engine = self.engine()
        engine.add_request(ids[0], sp, press, kv, kv_options)

        def pieces():
            with torch.inference_mode():
                while engine.has_unfinished():
                    for o in engine.step():
                        if o.text:
                            yield o.text

        return pieces()

    def chat(self, messages, sampling: SamplingParams | list[SamplingParams] | None = None,
             press: Press | None = None, stream: StreamCallback | None = None, kv: str = "dense",
             kv_options: dict | None = None, *, use_tqdm: bool = False) -> GenerationOutput:
        """Answer a conversation ([{"role", "content"}, ...]) or a list of conversations, rendered with the
        checkpoint's chat template, or the plain template for models without one (see `chat.py`)."""
        convs = [messages] if isinstance(messages, (list, tuple)) and messages and isinstance(messages[0], dict) \
            else messages
        if not isinstance(convs, (list, tuple)) or not convs:
            raise TypeError(f"messages must be a conversation (a list of dicts) or a list of them, got {messages!r:.80}")
        prompts = [self.encode_chat(conv) for conv in convs]
        return self.generate(prompts, sampling, press, stream, kv, kv_options, use_tqdm=use_tqdm)

    def chat_prompt(self, messages) -> str:
        """The prompt text `chat` generates from for one conversation."""
        template, specials = load_template(self.path)
        return render(check_messages(messages), template, specials)

    def encode_chat(self, messages) -> list[int]:
        """The prompt token ids `chat` generates from for one conversation."""
        if self.tokenizer is None:
            raise ValueError("this model has no tokenizer: chat needs one")
        template, specials = load_template(self.path)
        text = render(check_messages(messages), template, specials)
        if not text.strip():
            raise ValueError("the conversation renders to an empty prompt")
        # a checkpoint's template writes its own special tokens (no BOS added), as transformers does
        ids = self.tokenizer.encode(text, add_bos=None if template is None else False)
        return self.encode([ids])[0]  # the same checks as any prompt


# ---- argument checks ---------------------------------------------------------------------------
def _is_token(t) -> bool:
    return isinstance(t, numbers.Integral) and not isinstance(t, bool)


def _check_int(name: str, v, lo: int) -> None:
    if not _is_token(v):
        raise TypeError(f"{name} must be an int, got {type(v).__name__} {v!r}")
    if v < lo:
        raise ValueError(f"{name} must be >= {lo}, got {v}")


def _check_generate_args(n_prompts, sampling, press, stream, kv, kv_options, use_tqdm) -> list[SamplingParams]:
    """One SamplingParams per prompt, or TypeError / ValueError naming the argument."""
    if sampling is None:
        params = [SamplingParams()] * n_prompts
    elif isinstance(sampling, SamplingParams):
        params = [sampling] * n_prompts
    elif isinstance(sampling, (list, tuple)) and all(isinstance(s, SamplingParams) for s in sampling):
        if len(sampling) != n_prompts:
            raise ValueError(f"sampling has {len(sampling)} SamplingParams for {n_prompts} prompts")
        params = list(sampling)
    else:
        raise TypeError(f"sampling must be a SamplingParams (or one per prompt), got {type(sampling).__name__}"
                        + (": build it with SamplingParams(**...)" if isinstance(sampling, dict) else ""))
    if press is not None and not isinstance(press, Press):
        hint = f": use make_press({press!r})" if isinstance(press, str) else \
            ": use make_press(name, **options)" if isinstance(press, dict) else ""
        raise TypeError(f"press must be a Press object, got {type(press).__name__}{hint}")
    if stream is not None and not callable(stream):
        raise TypeError(f"stream must be a callable (index, token id, text piece), got {type(stream).__name__}")
    if not isinstance(kv, str):
        raise TypeError(f"kv must be a KV backend name (a string), got {type(kv).__name__}")
    if kv_options is not None and not (isinstance(kv_options, dict) and all(isinstance(k, str) for k in kv_options)):
        raise TypeError(f"kv_options must be a dict of option names to values, got {type(kv_options).__name__}")
    if not isinstance(use_tqdm, bool):
        raise TypeError(f"use_tqdm must be a bool, got {type(use_tqdm).__name__}")
    return params


def _progress(on: bool, total: int):
    if not on:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="generate", unit="seq")
