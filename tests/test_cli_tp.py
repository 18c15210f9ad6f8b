"""`tessera generate --tp 2` under torchrun gives the same greedy text as one process, with the
torch collectives (`--tp-backend torch`, the default) and with the fused Triton AllReduce
(`--tp-backend fused`, interpreted on CPU); `--ep 2` on the embedded MoE reasoner likewise, for each
dispatch backend, and `--tp 2 --ep 2` on four processes."""

import os
import socket
import subprocess
import sys

import pytest

from tessera.cli import main
from tessera.engine.engine import resolve_model_path
from tessera.models.loader import read_config

SEP = "-" * 60  # the CLI prints the completion, then this line, then the stats


def _free_port() -> int:
    with socket.socket() as s:  # other test runs on this machine may hold a fixed port
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(args: list[str], timeout: int, parallel=("--tp", "2"), nproc: int = 2) -> subprocess.CompletedProcess:
    # the fused kernels run on CPU only in Triton's interpreter, which must be chosen before import
    env = dict(os.environ, OMP_NUM_THREADS="1", TRITON_INTERPRET="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
           "--master-port", str(_free_port()), "-m", "tessera", *args, *parallel]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    assert r.returncode == 0, r.stderr[:3000] + "\n...\n" + r.stderr[-1500:]
    assert r.stdout.count("problem seed") == 1  # only rank 0 prints
    return r


@pytest.mark.dist
def test_generate_tp2_matches_single_process():
    args = ["generate", "--difficulty", "3", "--max-new-tokens", "120"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    one = subprocess.run([sys.executable, "-m", "tessera", *args], capture_output=True, text=True, timeout=120,
                         env=env)
    assert one.returncode == 0, one.stderr[-1500:]
    text1 = one.stdout.split(SEP)[0].strip()
    text2 = _torchrun(args, timeout=180).stdout.split(SEP)[0].strip()
    assert len(text1.split()) >= 100 and text2 == text1


@pytest.mark.dist
def test_generate_tp2_fused_backend_matches_single_process(capsys):
    # each interpreted AllReduce costs tens of ms per layer and token: a few tokens show the path
    args = ["generate", "--difficulty", "3", "--max-new-tokens", "6"]
    assert main(args) == 0  # the one-process baseline, in this process (no start-up cost)
    text1 = capsys.readouterr().out.split(SEP)[0].strip()
    two = _torchrun([*args, "--tp-backend", "fused"], timeout=240)
    assert len(text1) > 0 and two.stdout.split(SEP)[0].strip() == text1
    assert "generated: 6" in two.stdout


@pytest.mark.dist
@pytest.mark.parametrize("backend", ["torch", "decomposed", "pipelined"])
def test_generate_ep2_on_the_moe_reasoner_matches_single_process(capsys, backend):
    args = ["generate", "--model", "moe", "--difficulty", "3", "--max-new-tokens", "80"]
    assert main(args) == 0
    text1 = capsys.readouterr().out.split(SEP)[0].strip()
    two = _torchrun([*args, "--stats"], timeout=180, parallel=("--ep", "2", "--moe-backend", backend))
    assert len(text1.split()) >= 60 and two.stdout.split(SEP)[0].strip() == text1
    # --stats: per layer, rows to / from each rank, bytes and phase times (rank 0's view)
    ep_lines = [ln for ln in two.stdout.splitlines() if "expert parallel: rank 0: rows sent to ranks [" in ln]
    cfg = read_config(resolve_model_path("moe"))
    routed = [f"layer {i:2d} " for i in range(cfg.num_hidden_layers) if cfg.is_moe_layer(i)]  # layer 0 is dense
    assert [ln[:len("layer  1 ")] for ln in ep_lines] == routed and all("KiB dispatched to peers" in ln and "combine" in ln for ln in ep_lines)


@pytest.mark.dist
def test_generate_tp2_ep2_on_four_processes_matches_single_process(capsys):
    args = ["generate", "--model", "moe", "--difficulty", "2", "--max-new-tokens", "24"]
    assert main(args) == 0
    text1 = capsys.readouterr().out.split(SEP)[0].strip()
    four = _torchrun(args, timeout=240, parallel=("--tp", "2", "--ep", "2"), nproc=4)
    assert len(text1.split()) >= 12 and four.stdout.split(SEP)[0].strip() == text1


@pytest.mark.dist
@pytest.mark.parametrize("backend", [
    "fused",
    # COMET's interpreted fused GEMMs take ~3 min for a 40-token prefill on 2 cores: `make test-heavy`
    pytest.param("comet", marks=[pytest.mark.heavy, pytest.mark.timeout(900)])])
def test_generate_ep2_fused_dispatch_matches_single_process(capsys, backend):
    # interpreted puts and waits cost tens of ms per layer and token: a few tokens show the path
    new = "6" if backend == "fused" else "2"
    args = ["generate", "--model", "moe", "--difficulty", "3", "--max-new-tokens", new]
    assert main(args) == 0
    text1 = capsys.readouterr().out.split(SEP)[0].strip()
    two = _torchrun(args, timeout=800, parallel=("--ep", "2", "--moe-backend", backend))
    assert len(text1) > 0 and two.stdout.split(SEP)[0].strip() == text1
    assert f"generated: {new}" in two.stdout


def test_ep_errors_are_one_line(capsys):
    assert main(["generate", "--model", "moe", "--ep", "2", "--difficulty", "2"]) == 2
    assert "torchrun --nproc-per-node 2" in capsys.readouterr().err
    assert main(["generate", "--model", "moe", "--ep", "2", "--tp", "2", "--difficulty", "2"]) == 2
    assert "--tp 2 --ep 2 runs one process per rank: torchrun --nproc-per-node 4" in capsys.readouterr().err
    assert main(["generate", "--model", "moe", "--moe-backend", "fused", "--difficulty", "2"]) == 2
    assert "needs --ep N with N > 1" in capsys.readouterr().err


@pytest.mark.dist
def test_generate_disaggregated_attn2_expert2_matches_one_process():
    """The issue's launch: 2 attention + 2 expert ranks, 3 micro-batches per attention rank, the embedded MoE
    reasoner; every problem's text equals a one-process greedy run of the same problems."""
    from tessera.config import SamplingParams
    from tessera.engine import LLM
    from tessera.tasks.reasoning import make_problem

    n, new = 6, 24
    problems = [make_problem(1_000_000 + i, 2) for i in range(n)]
    llm = LLM.load("moe")
    want = llm.generate([p.prompt for p in problems], SamplingParams(max_new_tokens=new, temperature=0.0)).texts
    args = ["generate", "--model", "moe", "--difficulty", "2", "--max-new-tokens", str(new), "--batch-size", str(n)]
    four = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "4", "--master-port", str(_free_port()),
         "-m", "tessera", *args, "--disagg", "attn=2,expert=2", "--micro-batches", "3"],
        capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert four.returncode == 0, four.stderr[-3000:]
    blocks = four.stdout.split(SEP + "\n")
    got = [b.split("\nproblem seed")[0] for b in blocks[:n]]
    assert got == want
    assert "attention rank 1: busy" in four.stdout and "expert rank 3: busy" in four.stdout


def test_disagg_launch_errors_are_one_line_before_any_weight(capsys, monkeypatch):
    assert main(["generate", "--model", "moe", "--disagg", "attn=2,expert=2"]) == 2
    assert "torchrun --nproc-per-node 4" in capsys.readouterr().err
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "3")
    assert main(["generate", "--model", "moe", "--disagg", "attn=2,expert=2"]) == 2
    assert "needs 4 processes but torchrun started 3" in capsys.readouterr().err
    monkeypatch.setenv("WORLD_SIZE", "5")
    assert main(["generate", "--model", "moe", "--disagg", "attn=2,expert=3"]) == 2
    assert "num_experts=8 does not divide over 3 expert ranks" in capsys.readouterr().err
    assert main(["generate", "--model", "dense", "--disagg", "attn=2,expert=3"]) == 2
    assert "needs an MoE model" in capsys.readouterr().err
    assert main(["generate", "--model", "moe", "--disagg", "attn=two"]) == 2
    assert "attn=N,expert=M or a plan file" in capsys.readouterr().err
