"""A thin tokenizer wrapper over the `tokenizers` library (loads any HF `tokenizer.json`).

The embedded model uses a word-level vocabulary built from the task generator's word list, so one
word is one token; `build_word_tokenizer` writes it in the format `AutoTokenizer` loads.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

from tokenizers import Tokenizer as _HFTokenizer
from tokenizers import models, pre_tokenizers, processors

from tessera.config import ModelFileError

SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]
ON_UNKNOWN = ("warn", "raise", "ignore")


class UnknownTokensWarning(UserWarning):
    """Most of a prompt maps to the tokenizer's unknown token: the model cannot read it."""


class UnknownTokensError(ValueError):
    """Raised instead of the warning when the tokenizer's `on_unknown` is "raise"."""


def _load_json(f: Path):
    try:
        return json.loads(f.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelFileError(f"{f}: not valid JSON ({e}); is the file truncated?") from None


class Tokenizer:
    """`Tokenizer(model_dir)`. `on_unknown` says what a prompt that is mostly the unknown token gets (more than
    `max_unknown_share` of its tokens): "warn" (the default, an `UnknownTokensWarning`), "raise" (an
    `UnknownTokensError`) or "ignore". Both name the tokenizer and the first unknown words."""

    def __init__(self, path: str | Path, on_unknown: str = "warn", max_unknown_share: float = 0.5):
        path = Path(path)
        f = path / "tokenizer.json" if path.is_dir() else path
        if not f.is_file():
            raise FileNotFoundError(f"no tokenizer.json at {path}")
        spec = _load_json(f)  # a clear error before the Rust parser's bare `Exception`
        try:
            self._tok = _HFTokenizer.from_str(json.dumps(spec))
        except Exception as e:  # noqa: BLE001 - the tokenizers library raises a bare Exception
            raise ModelFileError(f"{f}: not a tokenizer the `tokenizers` library can load ({e})") from None
        if on_unknown not in ON_UNKNOWN:
            raise ValueError(f"on_unknown must be one of {ON_UNKNOWN}, got {on_unknown!r}")
        self.on_unknown, self.max_unknown_share = on_unknown, max_unknown_share
        cfg_file = f.parent / "tokenizer_config.json"
        cfg = _load_json(cfg_file) if cfg_file.is_file() else {}
        if not isinstance(cfg, dict):
            raise ModelFileError(f"{cfg_file}: must hold a JSON object, got {type(cfg).__name__}")

        def tid(name):
            t = cfg.get(name)
            t = t.get("content") if isinstance(t, dict) else t
            return None if t is None else self._tok.token_to_id(t)

        self.bos_id, self.eos_id, self.pad_id = tid("bos_token"), tid("eos_token"), tid("pad_token")
        self.add_bos = cfg.get("add_bos_token", self.bos_id is not None)
        m = spec.get("model") if isinstance(spec.get("model"), dict) else {}
        unk = m.get("unk_token")
        if unk is None and isinstance(m.get("unk_id"), int) and m.get("vocab"):  # Unigram: an index into vocab
            unk = m["vocab"][m["unk_id"]][0]
        self.unk_id = None if unk is None else self._tok.token_to_id(unk)
        #: what warnings and errors call this tokenizer
        self.name = f"{m.get('type', 'unknown-type')} tokenizer of {f.parent.name} ({self.vocab_size} tokens, {f})"

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size()

    def encode(self, text: str, add_bos: bool | None = None) -> list[int]:
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:  # lone surrogates: undecodable bytes from argv or a file read with errors=
            raise ValueError(f"text is not valid Unicode: {text[e.start]!r} at character {e.start} (bytes that "
                             "were not UTF-8?)") from None
        enc = self._tok.encode(text, add_special_tokens=False)
        ids = enc.ids
        if self.unk_id is not None and self.on_unknown != "ignore" and ids:
            self._check_unknown(text, enc)
        if (self.add_bos if add_bos is None else add_bos) and self.bos_id is not None:
            ids = [self.bos_id] + ids
        return ids

    def _check_unknown(self, text: str, enc) -> None:
        unk = [i for i, t in enumerate(enc.ids) if t == self.unk_id]
        if len(unk) <= self.max_unknown_share * len(enc.ids):
            return
        words = list(dict.fromkeys(text[slice(*enc.offsets[i])] for i in unk))
        msg = (f"{len(unk)} of {len(enc.ids)} prompt tokens are unknown to the {self.name}, e.g. "
               f"{', '.join(map(repr, words[:4]))}: the model sees only the unknown token for them")
        if self.on_unknown == "raise":
            raise UnknownTokensError(msg)
        warnings.warn(msg, UnknownTokensWarning, stacklevel=3)

    def decode(self, ids: list[int], skip_special: bool = True) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=skip_special)


def build_word_tokenizer(words: list[str], out_dir: str | Path, model_max_length: int) -> Tokenizer:
    """Write tokenizer.json / tokenizer_config.json / special_tokens_map.json for a word vocab."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    vocab = {w: i for i, w in enumerate(SPECIALS + [w for w in words if w not in SPECIALS])}
    tok = _HFTokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens(SPECIALS)
    # so that AutoTokenizer(text) starts with <s> like our encode() does
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", vocab["<s>"])])
    tok.save(str(out / "tokenizer.json"))
    special = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}
    cfg = dict(special, tokenizer_class="PreTrainedTokenizerFast", add_bos_token=True,
               model_max_length=model_max_length, clean_up_tokenization_spaces=False)
    (out / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    (out / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")
    return Tokenizer(out)
