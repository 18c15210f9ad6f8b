"""The ping-pong simulator (MegaScale-Infer, arXiv 2504.02263) against the paper's closed form, its knee
and the structure of its timeline."""

import itertools
import math
import random

import pytest

from tessera.parallel.disagg import pingpong as pp

GRID = list(itertools.product([1.0, 2.5], [1.0, 1.7, 3.0], [0.0, 0.2, 0.9], [1, 2, 3, 4, 6], [1, 3, 5]))


@pytest.mark.parametrize("ta,te,tc,m,L", GRID)
def test_simulator_is_the_generalised_closed_form(ta, te, tc, m, L):
    for links in ("serial", "parallel"):  # with Tc <= Tf a link never queues, so both agree
        assert pp.simulate(ta, te, tc, m, L, links=links).total == pytest.approx(pp.total_time(ta, te, tc, m, L))


@pytest.mark.parametrize("ta,te,tc,m,L", GRID)
def test_paper_closed_form_whenever_its_conditions_hold(ta, te, tc, m, L):
    c = pp.conditions_hold(ta, te, tc, m)
    sim = pp.simulate(ta, te, tc, m, L).total
    if c["tc_below_tf"] and c["enough_micro_batches"]:
        assert sim == pytest.approx(pp.closed_form(ta, te, tc, m, L))
    elif L > 1:  # without enough micro-batches the slower side waits: Eq. 5 is optimistic
        assert sim >= pp.closed_form(ta, te, tc, m, L) - 1e-9


def test_random_configurations_agree_with_the_closed_form():
    rng = random.Random(0)
    n = 0
    for _ in range(300):
        ta, te = rng.uniform(0.5, 2), rng.uniform(0.5, 2)
        tc = rng.uniform(0, 0.99) * max(ta, te)
        m, L = rng.randint(1, 8), rng.randint(1, 6)
        sim = pp.simulate(ta, te, tc, m, L).total
        assert sim == pytest.approx(pp.total_time(ta, te, tc, m, L))
        if m >= 2 * (1 + tc / max(ta, te)):
            assert sim == pytest.approx(pp.closed_form(ta, te, tc, m, L))
            n += 1
    assert n > 50  # the conditions held often enough for the check to mean something


def test_one_micro_batch_overlaps_nothing():
    ta, te, tc, L = 3.0, 2.0, 0.5, 4
    r = pp.simulate(ta, te, tc, 1, L)
    assert r.total == pytest.approx(L * (ta + te + 2 * tc))
    assert r.busy("attention") == pytest.approx(L * ta) and r.busy("experts") == pytest.approx(L * te)


@pytest.mark.parametrize("ratio", [0.0, 0.1, 0.3, 0.5, 0.7, 0.95])
def test_knee_is_where_the_paper_puts_it(ratio):
    """With Ta = Te the sides stop idling, and throughput at a fixed micro-batch size stops growing
    linearly, at m = ceil(2 (1 + Tc / Tf))."""
    ta = te = 1.0
    tc, L = ratio * ta, 6
    expect = math.ceil(2 * (1 + tc / ta) - 1e-12)
    assert pp.knee(ta, te, tc) == expect
    idle = {m: pp.simulate(ta, te, tc, m, L).idle_between("attention") for m in range(1, 9)}
    assert min(m for m in idle if idle[m] < 1e-9) == expect
    thr = {m: m / pp.simulate(ta, te, tc, m, L).total for m in range(1, 12)}  # micro-batches per second
    assert all(thr[m + 1] >= thr[m] - 1e-12 for m in range(1, 11))
    # from the knee on, Eq. 5 holds and throughput saturates toward 1 / (L Tf): the step to the knee
    # gains more than any step after it
    assert thr[expect] == pytest.approx(expect / pp.closed_form(ta, te, tc, expect, L))
    if expect > 1:
        gain_to_knee = thr[expect] / thr[expect - 1]
        assert all(thr[m + 1] / thr[m] < gain_to_knee for m in range(expect, 11))


def test_timeline_is_a_ping_pong():
    """While the experts work on micro-batch i, attention works on micro-batch i + 1 (same layer)."""
    r = pp.simulate(1.0, 1.0, 0.2, 3, 2)
    ev = {(e.kind, e.layer, e.micro): e for e in r.events}
    assert len(r.events) == 4 * 3 * 2
    for lyr in range(2):
        for i in range(2):
            e, a = ev[("experts", lyr, i)], ev[("attention", lyr, i + 1)]
            assert a.start < e.end and e.start < a.end  # they overlap in time
    for e in r.events:  # every chain in order: attention -> send -> experts -> receive -> next layer
        k = pp.KINDS.index(e.kind)
        prev = ev.get((pp.KINDS[k - 1], e.layer, e.micro)) if k else ev.get(("receive", e.layer - 1, e.micro))
        assert prev is None or prev.end <= e.start + 1e-12
    for res in pp.RESOURCES.values():  # a server runs one task at a time
        spans = sorted((e.start, e.end) for e in r.events if e.resource == res)
        assert all(b[0] >= a[1] - 1e-12 for a, b in zip(spans, spans[1:]))


def test_a_slow_link_queues_when_serial():
    ta = te = 1.0
    tc = 1.5  # Tc > Tf breaks the paper's second condition
    serial, parallel = pp.simulate(ta, te, tc, 4, 3), pp.simulate(ta, te, tc, 4, 3, links="parallel")
    assert parallel.total == pytest.approx(pp.total_time(ta, te, tc, 4, 3))
    assert serial.total > parallel.total


def test_send_overhead_lengthens_the_step():
    base = pp.simulate(1.0, 1.0, 0.2, 3, 4).total
    assert pp.simulate(1.0, 1.0, 0.2, 3, 4, send_overhead=0.1).total > base


@pytest.mark.parametrize("bad", [dict(m=0), dict(layers=0), dict(tc=-1.0)])
def test_bad_input_is_one_clear_error(bad):
    kw = dict(ta=1.0, te=1.0, tc=0.1, m=2, layers=2) | bad
    with pytest.raises(ValueError, match="must be"):
        pp.simulate(**kw)
