"""Distributed exits: a rank killed at any step of the symmetric heap's setup leaves no /dev/shm file behind
(the survivor removes every rank's file on its error path), and under torchrun a rank whose peer died exits
with status 2 and one error line, never a second traceback from the exit barrier."""

import glob
import os
import signal
import socket
import subprocess
import sys
import types
import uuid

import pytest

from tessera.distributed.symm import SETUP_STEPS
from tessera.distributed.testing import RankFailure, shared_pool

pytestmark = pytest.mark.dist


def _killed_in_setup(step: str, victim: int, tag: str):
    """Rank `victim` is SIGKILLed on entering `step`; the survivor reports which of the heap's files remain
    once its own setup (or its first barrier after it) has failed."""
    import torch.distributed as dist

    from tessera.distributed import parallel_state as ps
    from tessera.distributed import symm

    me = ps.rank()
    real_uuid = symm.uuid
    symm.uuid = types.SimpleNamespace(uuid4=lambda: types.SimpleNamespace(hex=tag))  # known file names
    if me == victim:
        symm._setup_step = lambda s: os.kill(os.getpid(), signal.SIGKILL) if s == step else None
    try:
        symm.SymmetricHeap(1 << 16)
        dist.barrier()  # a survivor whose setup completed (the peer died at the very end) learns it here
    except Exception as e:  # noqa: BLE001 - the survivor's error path has run: what did it leave?
        left = sorted(glob.glob(f"/dev/shm/tessera_{tag}_*"))
        raise RuntimeError(f"survivor failed as expected; left={left}; error: {type(e).__name__}") from None
    finally:
        symm.uuid = real_uuid
    return "no failure"


# the victim alternates so that both the tag's source (rank 0) and the other rank die at some step
CASES = [(step, 0 if step in ("tag", "created") else 1) for step in SETUP_STEPS]


@pytest.mark.parametrize("step,victim", CASES, ids=[f"{s}-rank{v}" for s, v in CASES])
def test_rank_killed_at_each_setup_step_leaves_no_shm_file(step, victim):
    pool = shared_pool(2)
    tag = f"kill{uuid.uuid4().hex[:8]}"
    with pytest.raises(RankFailure) as ei:
        pool.run(_killed_in_setup, step, victim, tag, timeout=90)
    errs = ei.value.errors
    survivor = 1 - victim
    assert "died" in errs[victim], errs
    assert "survivor failed as expected; left=[]" in errs[survivor], errs[survivor]
    pool.stop()
    assert glob.glob(f"/dev/shm/tessera_{tag}_*") == []


_DYING_PEER = """
import os, sys
from tessera.distributed import parallel_state as ps
ps.init_from_env("gloo")
if hasattr(ps, "initialize"):
    ps.initialize(tp=2)  # the named groups the CLI creates, so that rank 0 gets past its setup
os._exit(0)  # dies without a word: the peer of a crashed or OOM-killed rank
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cli_rank_whose_peer_died_exits_2_with_one_error_line():
    """Rank 0 runs `tessera generate --tp 2`; rank 1 joins the group and dies. Rank 0's first collective fails:
    it must print one line naming the lost peer and exit 2, without waiting on the dead group at exit."""
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), WORLD_SIZE="2",
               OMP_NUM_THREADS="1")
    peer = subprocess.Popen([sys.executable, "-c", _DYING_PEER], env=dict(env, RANK="1", LOCAL_RANK="1"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        r = subprocess.run([sys.executable, "-m", "tessera", "generate", "--tp", "2", "--difficulty", "2",
                            "--max-new-tokens", "4"], env=dict(env, RANK="0", LOCAL_RANK="0"),
                           capture_output=True, text=True, timeout=300)
    finally:
        peer.kill()
        peer.wait(timeout=30)
    assert r.returncode == 2, r.stderr[-3000:]
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    errors = [line for line in r.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1, r.stderr[-3000:]
    assert errors[0].startswith("tessera generate: error: rank 0: a collective failed: a peer process died")
