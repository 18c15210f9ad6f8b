"""A thin tokenizer wrapper over the `tokenizers` library (loads any HF `tokenizer.json`).

The embedded model uses a word-level vocabulary built from the task generator's word list, so one
word is one token; `build_word_tokenizer` writes it in the format `AutoTokenizer` loads.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer as _HFTokenizer
from tokenizers import models, pre_tokenizers, processors

SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]


class Tokenizer:
    def __init__(self, path: str | Path):
        path = Path(path)
        f = path / "tokenizer.json" if path.is_dir() else path
        if not f.is_file():
            raise FileNotFoundError(f"no tokenizer.json at {path}")
        self._tok = _HFTokenizer.from_file(str(f))
        cfg_file = f.parent / "tokenizer_config.json"
        cfg = json.loads(cfg_file.read_text()) if cfg_file.is_file() else {}

        def tid(name):
            t = cfg.get(name)
            t = t.get("content") if isinstance(t, dict) else t
            return None if t is None else self._tok.token_to_id(t)

        self.bos_id, self.eos_id, self.pad_id = tid("bos_token"), tid("eos_token"), tid("pad_token")
        self.add_bos = cfg.get("add_bos_token", self.bos_id is not None)

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size()

    def encode(self, text: str, add_bos: bool | None = None) -> list[int]:
        ids = self._tok.encode(text, add_special_tokens=False).ids
        if (self.add_bos if add_bos is None else add_bos) and self.bos_id is not None:
            ids = [self.bos_id] + ids
        return ids

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
