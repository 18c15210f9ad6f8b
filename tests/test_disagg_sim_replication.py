"""Hot-expert replication (greedy min-max) on synthetic loads."""

import itertools
import random

import pytest

from tessera.parallel.disagg import replication as rp


def _check_valid(loads, p, n_ranks, slots):
    assert len(p.ranks) == n_ranks and all(len(r) <= slots for r in p.ranks)
    assert all(len(set(r)) == len(r) for r in p.ranks)  # never two replicas of one expert on one rank
    assert sorted({e for r in p.ranks for e in r}) == list(range(len(loads)))  # every expert placed
    assert [sum(r.count(e) for r in p.ranks) for e in range(len(loads))] == p.replicas
    assert sum(p.rank_load) == pytest.approx(sum(loads))  # tokens are conserved


def test_even_loads_stay_even():
    p = rp.replicate([10.0] * 8, 4, 2)
    _check_valid([10.0] * 8, p, 4, 2)
    assert p.balancedness == pytest.approx(1.0) and p.replicas == [1] * 8


def test_one_hot_expert_gets_the_spare_slots():
    loads = [80.0] + [10.0] * 7
    before, after = rp.contiguous(loads, 4), rp.replicate(loads, 4, 3)
    _check_valid(loads, after, 4, 3)
    assert after.replicas[0] == 4  # as many replicas as ranks (the cap), the rest of the spares elsewhere
    assert after.balancedness > before.balancedness
    assert before.balancedness == pytest.approx((150 / 4) / 90)


def _optimal_makespan(loads, n_ranks, slots, replicas):
    """Brute force over assignments of the given replicas (small cases only)."""
    items = [(loads[e] / replicas[e], e) for e in range(len(loads)) for _ in range(replicas[e])]
    best = float("inf")
    for assign in itertools.product(range(n_ranks), repeat=len(items)):
        ranks = [[] for _ in range(n_ranks)]
        for (s, e), r in zip(items, assign):
            ranks[r].append((s, e))
        if any(len(r) > slots or len({e for _, e in r}) < len(r) for r in ranks):
            continue
        best = min(best, max(sum(s for s, _ in r) for r in ranks))
    return best


def test_greedy_is_within_the_lpt_bound_of_optimal():
    rng = random.Random(1)
    for _ in range(15):
        loads = [rng.choice([1, 2, 5, 20, 50]) * rng.random() for _ in range(6)]
        p = rp.replicate(loads, 3, 3)
        _check_valid(loads, p, 3, 3)
        assert max(p.rank_load) <= 4 / 3 * _optimal_makespan(loads, 3, 3, p.replicas) + 1e-9


def test_replication_never_makes_balance_worse_on_random_skews():
    rng = random.Random(2)
    for _ in range(200):
        E, W = rng.choice([(8, 2), (8, 4), (16, 4), (64, 8)])
        loads = [rng.paretovariate(1.2) for _ in range(E)]
        p = rp.replicate(loads, W, E // W + rng.randint(0, 2))
        _check_valid(loads, p, W, E // W + 2)
        assert max(p.rank_load) <= max(rp.contiguous(loads, W).rank_load) + 1e-9


@pytest.mark.parametrize("args,msg", [(([1.0] * 9, 2, 4), "do not fit"), (([1.0, -1.0], 2, 1), ">= 0"),
                                      (([1.0], 0, 1), ">= 1")])
def test_bad_input(args, msg):
    with pytest.raises(ValueError, match=msg):
        rp.replicate(*args)
