"""scripts/train_long.py's batch pipeline: a batch built ahead in a worker process is the batch the loop
would build itself from the same spec, so `--workers` changes the speed and not the data."""

import multiprocessing as mp
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import train_long  # noqa: E402
from train_tiny import _init_worker  # noqa: E402

from tessera.tasks.ruler import TASKS  # noqa: E402

TOK = str(ROOT / "tessera" / "assets" / "tiny-reasoner")
SPECS = [("repeat", 1, 499, 4, 8, 16, 1), ("ruler", 2, 0, 256, 3, 8192, True, TASKS, 0.5), ("reason",)]


def test_worker_batches_equal_loop_batches_and_reasoning_blocks_advance():
    _init_worker(TOK)
    plan = iter(SPECS * 2)
    local = train_long.Batches(lambda: next(plan), None, 1, 2048)
    want = [local.next() for _ in SPECS]
    assert [s[0] for s, _ in want] == ["repeat", "ruler", "reason"] and want[2][1] is None
    ids, mask, pos, lookup = want[1][1]
    assert ids.shape == mask.shape == pos.shape == lookup.shape and ids.shape[0] == 3
    assert (lookup <= mask).all() and lookup.sum() >= 3  # each answer's first token is a target

    pool = mp.get_context("spawn").Pool(1, _init_worker, (TOK,))
    try:
        plan = iter(SPECS * 3)
        ahead = train_long.Batches(lambda: next(plan), pool, 2, 2048)
        for (spec, batch), (spec_w, batch_w) in zip(want, (ahead.next() for _ in SPECS)):
            assert spec == spec_w
            if batch is not None:
                assert all(torch.equal(a, b) for a, b in zip(batch, batch_w))
        first, second = ahead.reason_block(), ahead.reason_block()
        assert first and second and not torch.equal(first[0][0], second[0][0])  # fresh problems each block
        assert ahead.reason_seed == 500_000 + 3 * 256  # the block after `second` is being built
    finally:
        pool.terminate()
