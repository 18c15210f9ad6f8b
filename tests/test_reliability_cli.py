"""Bad command-line input is one line and exit status 2, before any model loads; flags that other flags make
meaningless are errors (a press setting without a press) or one-line warnings; ShadowKV says when it ran dense
or held more than the dense cache. A few cases go through the real entry point in a subprocess (bytes on
argv, stdin, a damaged model); the rest call `main` in-process, where the exit code and stderr are the same."""

import os
import shutil
import subprocess
import sys

import pytest

from tessera.cli import main
from tessera.engine.engine import DEFAULT_MODEL

SEP = "-" * 60


def _err_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    return err


def test_press_settings_without_a_press_are_an_error(capsys):
    for flags in (["--budget", "64"], ["--window", "4", "--buffer", "8"]):
        assert main(["generate", *flags, "--difficulty", "2", "--max-new-tokens", "2"]) == 2
        err = _err_line(capsys)
        assert err.startswith("tessera generate: error: --press is 'none' (the full KV cache), so --") and \
            "would be ignored" in err
    assert main(["eval", "--press", "full", "--budget", "64", "--n", "1"]) == 2
    assert "would be ignored" in _err_line(capsys)


def test_prompt_errors_come_before_the_model_loads(tmp_path, capsys, monkeypatch):
    import tessera.engine

    def no_load(*a, **k):  # every case below must fail before loading anything
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(tessera.engine.LLM, "load", no_load)
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("caf\u00e9 is 3".encode("latin-1"))
    blank = tmp_path / "blank.txt"
    blank.write_text(" \n\n")
    cases = [
        (["--prompt", "\udcff\udcfe x"], "--prompt is not valid UTF-8 (byte 0xff at character 0)"),
        (["--prompt", "a", "--prompt-file", str(blank)], "--prompt and --prompt-file are exclusive"),
        (["--prompt-file", str(tmp_path / "missing.txt")], "cannot read"),
        (["--prompt-file", str(latin1)], "is not UTF-8 text (byte 0xe9 at offset 3)"),
        (["--prompt-file", str(blank)], "holds no text"),
    ]
    for flags, want in cases:
        assert main(["generate", *flags]) == 2, flags
        assert want in _err_line(capsys), flags


def test_eval_output_is_checked_before_the_run(tmp_path, capsys, monkeypatch):
    import tessera.engine

    monkeypatch.setattr(tessera.engine.LLM, "load", lambda *a, **k: (_ for _ in ()).throw(AssertionError("loaded")))
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    for out, want in ((a_file / "r.json", "cannot be written"), (tmp_path, "is a directory")):
        assert main(["eval", "--n", "1", "--output", str(out)]) == 2
        assert want in _err_line(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]  # the probe left nothing behind


def test_ignored_flags_warn_in_one_line_each(capsys):
    assert main(["generate", "--prompt", "a is 3 .", "--difficulty", "4", "--seed", "7", "--top-k", "5",
                 "--max-new-tokens", "2"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "tessera generate: warning: --difficulty is ignored: it chooses a generated problem, and a prompt was given",
        "tessera generate: warning: --top-k is ignored at --temperature 0 (greedy decoding); set a temperature to sample",
        "tessera generate: warning: --seed is ignored at --temperature 0 (greedy decoding); set a temperature to sample",
    ]


def test_shadowkv_says_when_it_ran_dense_or_held_more_than_dense(capsys):
    assert main(["generate", "--kv", "shadowkv", "--prompt", "a is 3 .", "--max-new-tokens", "2"]) == 0
    notes = [line for line in capsys.readouterr().out.splitlines() if line.startswith("note:")]
    assert notes == ["note: shadowkv: 1 of 1 prompts are shorter than the local window plus one chunk (40 tokens): "
                     "they ran dense"]
    assert main(["generate", "--kv", "shadowkv", "--difficulty", "3", "--max-new-tokens", "2"]) == 0
    notes = [line for line in capsys.readouterr().out.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and "covers the whole prompt of 1 of 1 prompts" in notes[0]
    assert "fast tier" in notes[0] and "dense cache" in notes[0]  # measured: it did hold more than dense
    assert main(["generate", "--difficulty", "3", "--max-new-tokens", "2"]) == 0  # dense backend: no note
    assert "note:" not in capsys.readouterr().out


def test_shadowkv_notes_are_in_the_api_stats_too():
    from tessera.config import SamplingParams
    from tessera.engine import LLM

    llm = LLM.load()
    out = llm.generate(["a is 3 ."], SamplingParams(max_new_tokens=2), kv="shadowkv")
    assert len(out.stats.notes) == 1 and "they ran dense" in out.stats.notes[0]
    assert llm.generate(["a is 3 ."], SamplingParams(max_new_tokens=2)).stats.notes == []


def _tessera(args, **kw) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "tessera", *args], capture_output=True, timeout=180, env=env, **kw)


def test_subprocess_non_utf8_argv_is_one_line():
    r = _tessera([b"generate", b"--prompt", b"caf\xe9 is 3"])
    err = r.stderr.decode().strip()
    assert r.returncode == 2 and err == ("tessera generate: error: --prompt is not valid UTF-8 (byte 0xe9 at "
                                         "character 3): pass UTF-8 text, or the prompt through --prompt-file")


def test_subprocess_prompt_from_stdin_warns_about_unknown_words():
    r = _tessera(["generate", "--prompt-file", "-", "--max-new-tokens", "2"], input=b"Bonjour le monde\n")
    out, err = r.stdout.decode(), r.stderr.decode()
    assert r.returncode == 0, err[-2000:]
    assert "prompt tokens: 4" in out  # <s> + three words: the final newline is not part of the prompt
    assert err.strip() == ("tessera generate: warning: 3 of 3 prompt tokens are unknown to the WordLevel tokenizer of "
                           f"tiny-reasoner (499 tokens, {DEFAULT_MODEL / 'tokenizer.json'}), e.g. 'Bonjour', 'le', "
                           "'monde': the model sees only the unknown token for them")


def test_subprocess_truncated_weights_are_one_line(tmp_path):
    d = tmp_path / "m"
    shutil.copytree(DEFAULT_MODEL, d)
    w = d / "model.safetensors"
    w.write_bytes(w.read_bytes()[:-4096])
    r = _tessera(["generate", "--model", str(d), "--difficulty", "2"])
    err = r.stderr.decode().strip()
    assert r.returncode == 2 and "\n" not in err, err[-2000:]
    assert err.startswith(f"tessera generate: error: {w}: not a readable safetensors file") and "truncated" in err


@pytest.mark.parametrize("flag", ["--tp", "--ep"])
def test_zero_ranks_are_refused(flag, capsys):
    assert main(["generate", flag, "0", "--difficulty", "2"]) == 2
    assert f"{flag} must be >= 1, got 0" in _err_line(capsys)
