"""Broken model directories: every damaged file is one `ModelFileError` naming the file and the problem (the API),
and one line with exit status 2 (the CLI); non-finite weights are refused at load time."""

import json
import os
import shutil
import warnings

import pytest
import torch
from safetensors.torch import load_file, save_file

from tessera.cli import main
from tessera.config import ModelConfig, ModelFileError
from tessera.engine import LLM
from tessera.engine.engine import DEFAULT_MODEL
from tessera.models.loader import read_config
from tessera.tokenizer import Tokenizer, UnknownTokensError, UnknownTokensWarning


@pytest.fixture
def model_dir(tmp_path):
    """A copy of the embedded model whose small files are real copies and whose weights are a symlink
    (a case that damages the weights replaces the link by a file)."""
    d = tmp_path / "m"
    d.mkdir()
    for f in DEFAULT_MODEL.iterdir():
        if f.name == "model.safetensors":
            os.symlink(f, d / f.name)
        else:
            shutil.copy(f, d / f.name)
    return d


def _config(d, change):
    f = d / "config.json"
    f.write_text(json.dumps(change(json.loads(f.read_text()))))


def _weights(d, data: bytes):
    (d / "model.safetensors").unlink()
    (d / "model.safetensors").write_bytes(data)


CONFIG_CASES = {
    "not-an-object": (lambda c: [1, 2], "must hold a JSON object, got list"),
    "missing-field": (lambda c: {k: v for k, v in c.items() if k != "hidden_size"}, "'hidden_size' is missing"),
    "zero-heads": (lambda c: {**c, "num_attention_heads": 0}, "'num_attention_heads' must be positive"),
    "zero-kv-heads": (lambda c: {**c, "num_key_value_heads": 0}, "num_key_value_heads must be positive"),
    "inconsistent-heads": (lambda c: {**c, "num_key_value_heads": 3}, "not a multiple of num_key_value_heads=3"),
    "hidden-not-divisible": (lambda c: {**{k: v for k, v in c.items() if k != "head_dim"}, "num_attention_heads": 3,
                                        "num_key_value_heads": 1}, "not divisible by num_attention_heads 3"),
    "string-count": (lambda c: {**c, "vocab_size": "499"}, "'vocab_size' must be an integer, got '499'"),
    "bool-count": (lambda c: {**c, "num_hidden_layers": True}, "must be an integer, got True"),
    "rope-scaling-list": (lambda c: {**c, "rope_scaling": [1]}, "'rope_scaling' must be an object"),
    "theta-string": (lambda c: {**c, "rope_theta": "abc"}, "'rope_theta' must be a number"),
    "eps-string": (lambda c: {**c, "rms_norm_eps": "x"}, "rms_norm_eps must be a number"),
    "eos-string": (lambda c: {**c, "eos_token_id": "x"}, "eos_token_id must be an integer"),
    "zero-positions": (lambda c: {**c, "max_position_embeddings": 0}, "max_position_embeddings must be positive"),
    "unknown-family": (lambda c: {**c, "model_type": "gpt2"}, "unsupported model_type 'gpt2'"),
}


@pytest.mark.parametrize("case", sorted(CONFIG_CASES))
def test_bad_config_json_names_the_file_and_the_problem(case, model_dir):
    change, what = CONFIG_CASES[case]
    _config(model_dir, change)
    with pytest.raises(ModelFileError) as ei:
        read_config(model_dir)
    msg = str(ei.value)
    assert msg.startswith(f"{model_dir / 'config.json'}: ") and what in msg and "\n" not in msg


def test_truncated_config_and_model_config_checks(model_dir):
    f = model_dir / "config.json"
    f.write_text(f.read_text()[:40])
    with pytest.raises(ModelFileError, match=r"config.json: not valid JSON .*truncated"):
        LLM.load(model_dir)
    # the dataclass itself refuses zero heads with a message, not a ZeroDivisionError
    with pytest.raises(ValueError, match="num_key_value_heads must be positive"):
        ModelConfig(vocab_size=8, hidden_size=8, intermediate_size=8, num_hidden_layers=1, num_attention_heads=2,
                    num_key_value_heads=0, head_dim=4)


def _safetensors_damage(good: bytes) -> dict[str, tuple[bytes, str]]:
    bad_header = bytearray(good)
    bad_header[8:20] = b"xxxxxxxxxxxx"
    huge = (2**40).to_bytes(8, "little") + good[8:]
    return {
        "truncated": (good[:-1000], "incomplete metadata"),
        "cut-in-the-header": (good[:100], "invalid header length"),
        "empty": (b"", "header too small"),
        "damaged-header": (bytes(bad_header), "invalid JSON in header"),
        "absurd-header-length": (huge, "header too large"),
    }


def test_damaged_safetensors_name_the_file(model_dir):
    good = (DEFAULT_MODEL / "model.safetensors").read_bytes()
    for name, (data, what) in _safetensors_damage(good).items():
        _weights(model_dir, data)
        with pytest.raises(ModelFileError) as ei:
            LLM.load(model_dir)
        msg = str(ei.value)
        assert str(model_dir / "model.safetensors") in msg and what in msg and "truncated or corrupted" in msg, name


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused_at_load(value, model_dir):
    state = load_file(str(DEFAULT_MODEL / "model.safetensors"))
    state["model.layers.1.mlp.down_proj.weight"][3, 5] = value
    (model_dir / "model.safetensors").unlink()
    save_file(state, str(model_dir / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ModelFileError, match=r"model.layers.1.mlp.down_proj.weight holds (1 NaN|0 NaN and 1 inf)"):
        LLM.load(model_dir)


def test_index_file_problems(model_dir):
    (model_dir / "model.safetensors").unlink()
    index = model_dir / "model.safetensors.index.json"
    for text, what in (('{"weight_map": ', "not valid JSON"), ("{}", '"weight_map"'), ("[]", '"weight_map"')):
        index.write_text(text)
        with pytest.raises(ModelFileError, match=what):
            LLM.load(model_dir)


def test_broken_tokenizer_files(model_dir):
    tok = model_dir / "tokenizer.json"
    good = tok.read_text()
    tok.write_text(good[:500])
    with pytest.raises(ModelFileError, match=r"tokenizer.json: not valid JSON .*truncated"):
        Tokenizer(model_dir)
    tok.write_text(json.dumps({"model": {"type": "NoSuchModel"}}))
    with pytest.raises(ModelFileError, match="not a tokenizer the `tokenizers` library can load"):
        Tokenizer(model_dir)
    tok.write_text(good)
    cfg = model_dir / "tokenizer_config.json"
    cfg.write_text(cfg.read_text()[:50])
    with pytest.raises(ModelFileError, match="tokenizer_config.json: not valid JSON"):
        LLM.load(model_dir)
    cfg.write_text("[1]")
    with pytest.raises(ModelFileError, match="tokenizer_config.json: must hold a JSON object"):
        Tokenizer(model_dir)


def test_unknown_words_warn_or_raise_naming_the_tokenizer():
    tok = Tokenizer(DEFAULT_MODEL)
    with pytest.warns(UnknownTokensWarning, match=r"3 of 4 prompt tokens are unknown to the WordLevel tokenizer of "
                                                  r"tiny-reasoner \(499 tokens.*'Hello', 'world', 'foo'"):
        tok.encode("Hello world foo the")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tok.encode("a is 3 . the")  # the task's own words: no warning
        tok.encode("Hello the mod is")  # one unknown word in four: not "mostly unknown"
    tok.on_unknown = "raise"
    with pytest.raises(UnknownTokensError, match="unknown to the WordLevel tokenizer"):
        tok.encode("Hello world")
    with pytest.raises(ValueError, match="on_unknown must be one of"):
        Tokenizer(DEFAULT_MODEL, on_unknown="sometimes")
    with pytest.raises(ValueError, match="not valid Unicode"):
        tok.encode("\udcff abc")  # a lone surrogate: a non-UTF-8 byte decoded with surrogateescape


def test_cli_broken_model_dir_is_one_line_and_status_2(model_dir, capsys):
    _config(model_dir, lambda c: {**c, "num_attention_heads": 0})
    for cmd in (["info"], ["generate", "--difficulty", "2"], ["eval", "--n", "1"], ["demo", "--n", "1"]):
        assert main([*cmd, "--model", str(model_dir)]) == 2
        err = capsys.readouterr().err.strip()
        assert err == (f"tessera {cmd[0]}: error: {model_dir / 'config.json'}: 'num_attention_heads' must be "
                       "positive, got 0"), err


def test_model_config_keeps_accepting_what_it_did():
    """Guard: the new type checks do not refuse valid configs (ints for float fields, eos lists)."""
    c = ModelConfig(vocab_size=8, hidden_size=8, intermediate_size=8, num_hidden_layers=1, num_attention_heads=2,
                    num_key_value_heads=1, head_dim=4, rope_theta=1000000, eos_token_id=[1, 2], rms_norm_eps=1e-5)
    assert c.eos_ids == (1, 2) and torch.tensor(c.rope_theta).item() == 1e6
