"""The repeat-copy task that grows (and measures) an induction head."""

import random

import pytest
import torch

from tessera.tasks.repeat import FIRST_ID, LENGTHS, copy_accuracy, held_out_batch, repeat_batch


def test_rows_are_bos_x_x_and_the_mask_covers_the_predictable_copy():
    ids, mask = repeat_batch(random.Random(0), 50, 16, 3, 9, bos_id=1)  # [16, 19]
    assert ids.shape == mask.shape == (16, 19)
    lengths = set()
    for row, m in zip(ids.tolist(), mask.tolist()):
        n = sum(1 for t in row[1:] if t != 0) // 2
        lengths.add(n)
        x = row[1:n + 1]
        assert row[0] == 1 and row[n + 1:2 * n + 1] == x and all(FIRST_ID <= t < 50 for t in x)
        assert all(t == 0 for t in row[2 * n + 1:])
        # the first token of the second copy is unpredictable; every later one is a copy
        assert [i for i, v in enumerate(m) if v] == list(range(n + 2, 2 * n + 1))
    assert len(lengths) > 1  # lengths vary per row, or a fixed-distance head would solve it


def test_copy_accuracy_is_one_for_an_induction_oracle_and_near_chance_otherwise():
    V = 5000  # large, so that no x repeats a token of its own (the oracle would then be ambiguous)
    ids, mask = repeat_batch(random.Random(1), V, 8, 4, 12)

    def oracle(x):  # [B, T] -> [B, T, V]: predict the token that followed this one's previous occurrence
        out = torch.zeros(*x.shape, V)
        for b in range(x.shape[0]):
            for t in range(x.shape[1]):
                prev = [s for s in range(t) if x[b, s] == x[b, t]]
                out[b, t, x[b, prev[-1] + 1] if prev else 0] = 1
        return out

    assert copy_accuracy(oracle, ids, mask) == 1.0
    assert copy_accuracy(lambda x: torch.randn(*x.shape, V, generator=torch.Generator().manual_seed(0)), ids, mask) < 0.05


@pytest.mark.parametrize("lo,hi,vocab", [(1, 5, 50), (6, 5, 50), (2, 5, 4)])
def test_bad_arguments_are_refused(lo, hi, vocab):
    with pytest.raises(ValueError):
        repeat_batch(random.Random(0), vocab, 2, lo, hi)


def test_the_held_out_batch_is_fixed():
    a, b = held_out_batch(100), held_out_batch(100)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and a[0].shape == (64, 2 * LENGTHS[1] + 1)
    assert not torch.equal(a[0], repeat_batch(random.Random(0), 100, 64, *LENGTHS)[0])
