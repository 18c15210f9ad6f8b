import json
import subprocess
import sys

from tessera.cli import main


def test_info(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "tessera" in out and "presses" in out and "layers" in out


def test_generate_problem(capsys):
    assert main(["generate", "--difficulty", "3", "--max-new-tokens", "400"]) == 0
    out = capsys.readouterr().out
    assert "tok/s" in out and "peak KV" in out and "expected" in out


def test_eval_writes_json(tmp_path, capsys):
    f = tmp_path / "r.json"
    assert main(["eval", "--n", "2", "--difficulty", "3", "--batch-size", "2", "--output", str(f)]) == 0
    res = json.loads(f.read_text())
    assert res["n"] == 2 and len(res["results"]) == 2 and 0 <= res["accuracy"] <= 1


def test_errors_are_one_line(capsys):
    assert main(["generate", "--model", "/no/such/dir"]) == 2
    err = capsys.readouterr().err
    assert "not a directory" in err and "Traceback" not in err
    assert main(["generate", "--press", "bogus", "--difficulty", "2"]) == 2
    assert "unknown press" in capsys.readouterr().err
    assert main(["generate", "--top-p", "0", "--difficulty", "2"]) == 2
    assert "top_p" in capsys.readouterr().err


def test_python_dash_m():
    r = subprocess.run([sys.executable, "-m", "tessera", "info"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "tessera" in r.stdout


def test_demo_compares_full_kv_and_rkv(capsys):
    assert main(["demo", "--n", "1"]) == 0
    out = capsys.readouterr().out
    assert "FullKV" in out and "rkv (budget 256)" in out and "peak KV" in out


def test_generate_quantized(capsys):
    for scheme in ("w8a8", "w4a8"):
        assert main(["generate", "--quant", scheme, "--difficulty", "2", "--max-new-tokens", "200"]) == 0
        assert "tok/s" in capsys.readouterr().out


def test_tp_outside_torchrun_says_how_to_launch(capsys, monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    assert main(["generate", "--tp", "2"]) == 2
    assert "torchrun --nproc-per-node 2" in capsys.readouterr().err


def test_demo_refuses_zero_problems(capsys):
    assert main(["demo", "--n", "0"]) == 2
    assert "--n must be >= 1" in capsys.readouterr().err


def test_quant_with_tensor_parallelism_is_refused(capsys):
    assert main(["generate", "--quant", "w8a8", "--tp", "2"]) == 2  # before any process group is needed
    assert "--quant with --tp > 1 is not supported" in capsys.readouterr().err


def test_shadowkv_chunk_options_reach_the_backend(capsys):
    from tessera.cli import _kv, build_parser
    from tessera.kv.shadowkv import ShadowKVOptions

    args = build_parser().parse_args(["generate", "--kv", "shadowkv", "--sparse-budget", "256", "--landmark", "bounds",
                                      "--chunk-size", "16", "--outlier-chunks", "24", "--local-chunks", "2"])
    kv = _kv(args)
    assert kv["kv"] == "shadowkv" and ShadowKVOptions(**kv["kv_options"]) == ShadowKVOptions(
        sparse_budget=256, landmark="bounds", chunk_size=16, outlier_chunks=24, local_chunks=2)
    # a budget that is not whole chunks is a one-line error, not a traceback
    assert main(["generate", "--kv", "shadowkv", "--sparse-budget", "100", "--chunk-size", "16", "--difficulty", "2"]) == 2
    err = capsys.readouterr().err
    assert "multiple of chunk_size=16" in err and "Traceback" not in err


def test_tp_backend_needs_several_ranks(capsys):
    assert main(["generate", "--tp-backend", "fused"]) == 2
    assert "--tp-backend fused needs --tp N with N > 1" in capsys.readouterr().err
    assert main(["generate", "--tp", "0"]) == 2
    assert "--tp must be >= 1" in capsys.readouterr().err


def test_fused_tp_on_cpu_needs_the_triton_interpreter(capsys, monkeypatch):
    monkeypatch.setenv("RANK", "0")  # as under torchrun; the check comes before any process group
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert main(["generate", "--tp", "2", "--tp-backend", "fused"]) == 2
    assert "set TRITON_INTERPRET=1" in capsys.readouterr().err


def test_help_groups_options_by_backend():
    from tessera.cli import build_parser

    sub = build_parser()._subparsers._group_actions[0].choices["generate"]
    groups = {g.title: {a.dest for a in g._group_actions} for g in sub._action_groups}
    assert {"press", "budget", "buffer", "window"} <= groups["KV compression (--press)"]
    assert {"kv", "sparse_budget", "rank", "landmark", "chunk_size"} <= groups["ShadowKV / Quest (--kv)"]
    assert groups["quantization (--quant)"] == {"quant"}
    assert groups["tensor parallelism (--tp)"] == {"tp", "tp_backend"}
