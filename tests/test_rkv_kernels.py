"""R-KV's redundancy pass: the fused Triton kernel (TRITON_INTERPRET=1 on CPU, via conftest) and the CPU
row-block path against the definition (tessera/kernels/rkv/reference.py), and through the press."""

import pytest
import torch

from tessera.kernels.rkv import (
    redundancy,
    redundancy_from_row_stats,
    redundancy_ref,
    row_stats_blocked,
    row_stats_ref,
    row_stats_triton,
)
from tessera.kv.presses import RKVPress


def _keys(R, H, N, D, seed, dup=0.1):
    """Random keys with planted near-duplicates (some far after their original), so rows have matches."""
    g = torch.Generator().manual_seed(seed)
    k = torch.randn(R, H, N, D, generator=g)
    for i in range(0, N - 1, 3):
        j = int(torch.randint(i + 1, N, (1,), generator=g))
        k[:, :, j] = k[:, :, i] + dup * torch.randn(R, H, D, generator=g)
    return k


def _valid(R, N, lens):
    return torch.arange(N)[None] < torch.tensor(lens)[:, None]


@pytest.mark.parametrize("impl", [row_stats_blocked, row_stats_triton])
@pytest.mark.parametrize("R,H,N,D,lens", [(2, 2, 37, 16, [37, 21]), (1, 3, 50, 24, [50]), (3, 1, 9, 8, [9, 1, 5])])
def test_row_stats_match_the_definition(impl, R, H, N, D, lens):
    keys, valid = _keys(R, H, N, D, seed=N * 10 + D), _valid(R, N, lens)
    kw = {"block_i": 16, "block_j": 16} if impl is row_stats_triton else {"block_elems": 300}  # several blocks
    rowsum, last, val = impl(keys, valid, 0.5, **kw)
    want = row_stats_ref(keys, valid, 0.5)
    torch.testing.assert_close(rowsum, want[0], atol=1e-5, rtol=1e-5)
    assert torch.equal(last, want[1])
    torch.testing.assert_close(val, want[2], atol=1e-6, rtol=1e-5)
    assert (want[1] > 0).any()  # planted duplicates: some rows have a most recent match to exempt
    for b, n in enumerate(lens):  # padding rows write zeros
        assert (rowsum[b, :, n:] == 0).all() and (last[b, :, n:] == 0).all()
    red = redundancy_from_row_stats(rowsum, last, val, valid)
    torch.testing.assert_close(red, redundancy_ref(keys, valid, 0.5), atol=1e-7, rtol=1e-5)


def test_rows_without_a_match_exempt_column_zero():
    """No pair above the threshold: the authors' code zeroes S[i, 0] of every row (its argmax of zeros)."""
    keys = torch.eye(16)[None, None, :12] + 0.01  # nearly orthogonal unit keys: no cosine > 0.5
    valid = torch.ones(1, 12, dtype=torch.bool)
    rowsum, last, val = row_stats_triton(keys, valid, 0.5, block_i=16, block_j=16)
    assert (last == 0).all()
    want = row_stats_ref(keys, valid, 0.5)
    torch.testing.assert_close(val, want[2])
    torch.testing.assert_close(rowsum, want[0])
    assert val[0, 0, 0] == 0 and (val[0, 0, 1:] > 0).all()  # row 0's S_00 is the zeroed diagonal


def test_the_older_duplicate_is_the_more_redundant():
    keys = _keys(1, 1, 30, 16, seed=3, dup=0.0)
    keys[0, 0, 25] = keys[0, 0, 4]  # token 25 repeats token 4
    valid = torch.ones(1, 30, dtype=torch.bool)
    red = redundancy(keys, valid, impl="triton")
    assert red[0, 0, 4] > red[0, 0, 25]
    torch.testing.assert_close(red, redundancy(keys, valid, impl="blocked"), atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("impl", ["reference", "blocked", "triton"])
def test_press_selects_the_same_tokens_with_every_impl(impl):
    from test_presses import _filled_cache

    c = _filled_cache([40, 33], 2, 4, 16, 4, torch.Generator().manual_seed(9))
    rows = torch.tensor([0, 1])
    want = RKVPress(budget=20, buffer=8, window=4, impl="reference").select(c, 0, rows)
    assert torch.equal(RKVPress(budget=20, buffer=8, window=4, impl=impl).select(c, 0, rows), want)


def test_bad_input_is_one_clear_line():
    with pytest.raises(ValueError, match="row_stats_triton: keys"):
        row_stats_triton(torch.randn(2, 5, 8), torch.ones(2, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="prefix"):
        row_stats_triton(torch.randn(1, 1, 5, 8), torch.tensor([[True, False, True, True, True]]))
    with pytest.raises(ValueError, match="threshold"):
        row_stats_triton(torch.randn(1, 1, 5, 8), torch.ones(1, 5, dtype=torch.bool), -0.1)
    with pytest.raises(ValueError, match="unknown redundancy impl"):
        redundancy(torch.randn(1, 1, 5, 8), torch.ones(1, 5, dtype=torch.bool), impl="cuda")
