"""The two M2N backends (point-to-point torch.distributed and the symmetric heap with ready flags) over real
gloo processes: the same results bit for bit on random requests (zero-row requests, several in flight,
attention ranks that stop at different times), batched expert calls equal to one call per request, a
full set of result slots refused, and a killed peer an `M2NError` on the other side within seconds with
nothing left in /dev/shm."""

import glob
import re

import pytest
import torch

from tessera.distributed.testing import RankFailure, RankPool, shared_pool

pytestmark = pytest.mark.dist

H, EL, LAYERS, R = 8, 3, 3, 10  # hidden, local experts per expert rank, layers, requests of attention rank 0
MODES = [("p2p", False), ("heap", False), ("heap", True), ("p2p", True)]  # (backend, batched expert calls)


def _params(N: int):
    g = torch.Generator().manual_seed(7)
    return torch.randn(N, LAYERS, EL, H, generator=g), torch.randn(N, LAYERS, EL, H, generator=g)


def _expert(j: int, w, b, calls: list | None = None):
    """Expert rank j's experts: elementwise per (layer, local expert), so a row's result does not depend on
    which rows share its call (batched and unbatched must agree bit for bit) but does on where it went."""

    def fn(layer, rows, offsets):  # rows [n, H], offsets [EL + 1]
        if calls is not None:
            calls.append(len(rows))
        out = torch.empty_like(rows)
        for e in range(EL):
            lo, hi = int(offsets[e]), int(offsets[e + 1])
            out[lo:hi] = torch.tanh(rows[lo:hi]) * w[j, layer, e] + b[j, layer, e]
        return out

    return fn


def _requests(a: int, N: int):
    """Attention rank a's requests: R - a of them (ranks stop at different times), layers shared by all
    ranks (lock step), counts 0..3 per (expert rank, local expert), every fourth request with no rows."""
    layers = torch.randint(0, LAYERS, (R,), generator=torch.Generator().manual_seed(1)).tolist()
    g = torch.Generator().manual_seed(100 + a)
    out = []
    for i in range(R - a):
        matrix = torch.randint(0, 4, (N, EL), generator=g) * (i % 4 != 3)  # [N, EL]
        out.append((layers[i], torch.randn(int(matrix.sum()), H, generator=g), matrix))
    return out


def _expected(layer, x, matrix, w, b):
    parts, start = [], 0
    for j in range(matrix.shape[0]):
        n = int(matrix[j].sum())
        offsets = torch.zeros(EL + 1, dtype=torch.long)
        offsets[1:] = matrix[j].cumsum(0)
        parts.append(_expert(j, w, b)(layer, x[start:start + n], offsets))
        start += n
    return torch.cat(parts)


def _drive(m2n, reqs, slots: int):
    """Keep `slots` requests in flight; a send with every result slot in flight is refused, nothing changes."""
    results, inflight, refused = [], [], None
    for layer, x, matrix in reqs:
        if len(inflight) == slots:
            if refused is None:
                try:
                    m2n.send(layer, x, matrix)
                except ValueError as e:
                    refused = str(e)
            results.append(m2n.recv(inflight.pop(0)).clone())
        inflight.append(m2n.send(layer, x, matrix))
    results += [m2n.recv(p).clone() for p in inflight]
    m2n.stop()
    return results, refused


def _exchange_job(M: int, N: int, slots: int):
    import torch.distributed as dist

    from tessera.parallel.disagg.m2n import make_m2n

    me = dist.get_rank()
    attn, experts = list(range(M)), list(range(M, M + N))
    max_rows = 3 * EL * N
    ctx = {b: make_m2n(b, attn, experts, H, EL, max_rows, slots=slots, timeout_s=20) for b in ("p2p", "heap")}
    w, b = _params(N)
    if me in experts:
        out = []
        for backend, batch in MODES:
            calls = []
            served = ctx[backend].serve(_expert(experts.index(me), w, b, calls), batch=batch)
            out.append((served, len(calls), ctx[backend].calls))
            ctx[backend].calls = 0
        ctx["heap"].close()
        return out
    reqs = _requests(me, N)
    want = [_expected(*r, w, b) for r in reqs]
    same, refusals = [], []
    for backend, _ in MODES:  # the same requests for each of the expert side's modes
        got, refused = _drive(ctx[backend], reqs, slots)
        same.append(len(got) == len(want) and all(torch.equal(g, x) for g, x in zip(got, want)))
        refusals.append(refused)
    too_many = torch.zeros(N, EL, dtype=torch.long)
    too_many[0, 0] = max_rows + 1
    for m2n in ctx.values():
        with pytest.raises(ValueError, match=f"at most {max_rows}"):
            m2n.send(0, torch.zeros(max_rows + 1, H), too_many)
    ctx["heap"].close()
    return same, refusals, [m.tolist() for _, _, m in reqs]


@pytest.mark.parametrize("M, N, slots", [(1, 2, 3), (2, 1, 2), (2, 2, 3), (1, 3, 4), (3, 1, 2)])  # W = 3, 4
def test_heap_and_p2p_backends_give_the_same_results(M, N, slots):
    out = shared_pool(M + N).run(_exchange_job, M, N, slots, timeout=120)
    matrices = {}
    for a in range(M):
        same, refusals, matrices[a] = out[a]
        assert same == [True] * len(MODES), (a, same)  # each mode equals the reference, bit for bit
        assert all(r is not None and f"fill all {slots} result slots" in r and "\n" not in r for r in refusals)
    for j in range(N):
        per_request = sum(1 for a in range(M) for m in matrices[a] if sum(m[j]))
        per_round = sum(1 for i in range(R) if any(i < len(matrices[a]) and sum(matrices[a][i][j]) for a in range(M)))
        for (backend, batch), (served, calls, counted) in zip(MODES, out[M + j]):
            assert served == sum(len(matrices[a]) for a in range(M))
            assert calls == counted == (per_round if batch else per_request), (backend, batch)
    if M > 1:
        assert per_round < per_request  # batching saved calls


def _killed_peer_job(victim: int, batch: bool):
    """Attention ranks 0, 1 and expert rank 2 over the heap (timeout 30 s): `victim` is SIGKILLed after setup.
    A survivor that waits on it reports how long the M2NError took."""
    import os
    import signal
    import time

    import torch.distributed as dist

    from tessera.parallel.disagg.m2n import M2NError, make_m2n

    me = dist.get_rank()
    m2n = make_m2n("heap", [0, 1], [2], H, EL, 16, slots=2, timeout_s=30)
    w, b = _params(1)
    if me == victim:
        os.kill(os.getpid(), signal.SIGKILL)
    t0 = time.monotonic()
    try:
        if me == 2:
            return m2n.serve(_expert(0, w, b), batch=batch)
        for layer, x, matrix in _requests(me, 1)[:3]:
            m2n.recv(m2n.send(layer, x, matrix))
        m2n.stop()
        return "done"
    except M2NError as e:
        raise RuntimeError(f"M2NError after {time.monotonic() - t0:.2f} s: {e}") from e


@pytest.mark.parametrize("victim, batch", [(2, False), (0, False), (0, True)])
def test_a_killed_peer_is_an_error_within_seconds_and_leaves_no_shm_file(victim, batch):
    before = set(glob.glob("/dev/shm/tessera_*"))
    pool = RankPool(3, gloo_timeout_s=10)  # its own pool: a rank of it dies
    try:
        with pytest.raises(RankFailure) as ei:
            pool.run(_killed_peer_job, victim, batch, timeout=90)
    finally:
        pool.stop()
    errors = ei.value.errors
    assert "exit code -9" in errors[victim]
    # who waits on whom: unbatched, expert rank 2 answers attention rank 1 to its end and waits on rank 0 only;
    # batched, a round needs rank 0's request, so rank 2 gives up and rank 1, waiting on rank 2, fails too
    waits = {0: 2, 1: 2} if victim == 2 else {2: 0, 1: 2} if batch else {2: 0}
    assert set(errors) == {victim, *waits}, errors
    for r, on in waits.items():
        m = re.search(r"M2NError after ([0-9.]+) s: rank (\d): (\w+) rank (\d) (is gone|gave up)", errors[r])
        assert m and m[3] == ("expert" if on == 2 else "attention") and int(m[4]) == on, errors[r]
        assert m[5] == ("is gone" if on == victim else "gave up")
        assert float(m[1]) < 5.0  # the liveness check, not the 30 s timeout
    assert set(glob.glob("/dev/shm/tessera_*")) <= before
