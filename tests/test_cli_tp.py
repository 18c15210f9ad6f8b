"""`tessera generate --tp 2` under torchrun gives the same greedy text as one process."""

import os
import subprocess
import sys

import pytest


@pytest.mark.dist
def test_generate_tp2_matches_single_process():
    args = ["-m", "tessera", "generate", "--difficulty", "3", "--max-new-tokens", "120"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    one = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=120, env=env)
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                          "--master-port", "29533", *args, "--tp", "2"],
                         capture_output=True, text=True, timeout=180, env=env)
    assert one.returncode == 0 and two.returncode == 0, two.stderr[:3000] + "\n...\n" + two.stderr[-1500:]
    text1 = one.stdout.split("-" * 60)[0].strip()
    text2 = two.stdout.split("-" * 60)[0].strip()
    assert len(text1.split()) >= 100 and text2 == text1
    assert two.stdout.count("problem seed") == 1  # only rank 0 prints
