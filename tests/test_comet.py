"""COMET's fused layers (tessera/kernels/moe/comet_layer0.py, comet_layer1.py) over real gloo processes with
the Triton kernels interpreted: numerics against the single-process reference and the sequential EP path
(torch dispatch, grouped GEMMs, combine), bitwise equality across (n_c, n_blocks), the tile order read back
from the kernels' event trace, and the EP edge cases at 2 and 4 ranks."""

import pytest
import torch

from tessera.distributed.testing import RankFailure, shared_pool

pytestmark = pytest.mark.dist

H, FF, K, CAP = 40, 20, 2, 12  # hidden (3 column tiles of 16), expert width, top-k, tokens per rank at most


def _inputs(rank: int, it: int, E: int, dtype=torch.float32):
    """Rank `rank`'s tokens at call `it`: a count in {0, 7, 3, 12}, random routes; call 1 sends every token to
    expert 0 (skew), call 2 never uses the last expert (an empty expert everywhere); dropped slots."""
    g = torch.Generator().manual_seed(1000 * it + rank)
    T = [0, 7, 3, 12][(rank + it) % 4]
    x = torch.randn(T, H, generator=g).to(dtype)
    n = E - 1 if it == 2 else E
    ids = torch.stack([torch.randperm(n, generator=g)[:K] for _ in range(T)]) if T else torch.zeros(0, K).long()
    if it == 1 and T:
        ids[:, 0] = 0
    if T > 2:
        ids[1, 1] = -1
    return x, ids, torch.rand(T, K, generator=g)


def _weights(E: int, dtype):
    g = torch.Generator().manual_seed(7)
    return (torch.randn(E, 2 * FF, H, generator=g) / H**0.5).to(dtype), (torch.randn(E, H, FF, generator=g) / FF**0.5).to(dtype)


def _rel(a, b):
    return ((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-6)).item() if b.numel() else 0.0


def _check_layer0_trace(events, r, W, E, it, nc_max):
    """Tiles of this rank's own rows finish before any tile that needs a remote rank; each tile waited on the
    flags of exactly the source its rows come from (sources derived here from the inputs, not from the layout)."""
    from tessera.kernels.moe import comet_layer0 as L0

    EL = E // W
    src_of_row = []
    for q in range(W):
        s = (r + q) % W
        _, ids, _ = _inputs(s, it, E)
        src_of_row += [s] * int(((ids >= r * EL) & (ids < (r + 1) * EL)).sum())
    done = [(i, a, b) for i, (kind, a, b) in enumerate(events) if kind == L0.EV_TILE]
    waited = {}
    for kind, a, b in events:
        if kind == L0.EV_WAITED:
            waited.setdefault(a, []).append(b // nc_max)
    assert len(done) == len(waited)
    for _, tile, row in done:
        assert waited[tile] == [src_of_row[row]], (tile, waited[tile], src_of_row[row])
    local = [i for i, _, row in done if src_of_row[row] == r]
    remote = [i for i, _, row in done if src_of_row[row] != r]
    assert not (local and remote) or max(local) < min(remote)
    return len(local), len(remote)


def _check_layer1_trace(events, n_blocks, n_c):
    """Block j's partial sums were sent (by all n_c senders) after its tiles and before block j+1 finished."""
    from tessera.kernels.moe import comet_layer1 as L1

    tiles = {j: [i for i, (k, _, b) in enumerate(events) if k == L1.EV_TILE and b == j] for j in range(n_blocks)}
    sent = {j: [i for i, (k, a, _) in enumerate(events) if k == L1.EV_SENT and a == j] for j in range(n_blocks)}
    for j in range(n_blocks):
        assert len(sent[j]) == n_c
        assert not tiles[j] or min(sent[j]) > max(tiles[j])
        if j + 1 < n_blocks and tiles[j + 1]:
            assert max(sent[j]) < max(tiles[j + 1])


def _comet_job(E: int, dtype_name: str, iters: int, stagger: bool, configs: dict):
    """`configs[it]`: the (n_c, n_blocks) to run call `it`'s inputs with (several: results compared bitwise)."""
    import time

    from tessera.distributed import parallel_state as ps
    from tessera.distributed.symm import SymmetricHeap
    from tessera.kernels.moe.comet_context import comet_heap_bytes, create_comet_context, read_trace
    from tessera.kernels.moe.comet_layer0 import comet_layer0
    from tessera.kernels.moe.comet_layer1 import comet_layer1
    from tessera.kernels.moe.comet_ref import layer0_ref, moe_ref
    from tessera.kernels.moe.comet_tune import CometConfig
    from tessera.layers.experts import grouped_swiglu
    from tessera.parallel.ep_dispatch import combine, dispatch

    torch.set_num_threads(1)  # W ranks share 2 cores: spinning intra-op threads would slow every rank down
    dtype = getattr(torch, dtype_name)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    W, r = ps.world_size(), ps.rank()
    EL = E // W
    wgu, wd = _weights(E, dtype)
    mine = slice(r * EL, (r + 1) * EL)
    heap = SymmetricHeap(comet_heap_bytes(W, CAP, K, H, FF, E, dtype, trace_cap=512))
    if stagger:  # ranks launch at different times: a missing wait would read stale rows and fail
        barrier = heap.barrier
        heap.barrier = lambda *a, **kw: (barrier(*a, **kw), time.sleep(0.3 * (W - 1 - r) / (W - 1)))
    ctx = create_comet_context(heap, CAP, K, H, FF, E, dtype, timeout_s=30, trace_cap=512)
    report = []
    try:
        for it in range(iters):  # epochs: nothing is reset between calls
            x, ids, w = _inputs(r, it, E, dtype)
            outs = []
            for n_c, nb in configs[it]:
                act, lay = comet_layer0(x, ids, w, wgu[mine], ctx, config=CometConfig(n_c, nb))
                everyone = [_inputs(s, it, E, dtype) for s in range(W)]
                want = layer0_ref([e[0] for e in everyone], [e[1] for e in everyone], wgu, r)
                assert act.shape == want.shape and _rel(act, want) <= tol, (act.shape, want.shape, _rel(act, want))
                ev0 = read_trace(ctx)
                out = comet_layer1(act, wd[mine], lay, ctx)
                ev1 = read_trace(ctx)
                assert _rel(out, moe_ref(x, ids, w.to(dtype), wgu, wd)) <= tol
                rows, _, ref_layout = dispatch(x, ids, w.to(dtype), E)  # the sequential path
                seq = combine(grouped_swiglu(rows, ref_layout.expert_offsets, wgu[mine], wd[mine]), ref_layout)
                assert _rel(out, seq) <= tol
                outs.append(out)
                report.append((it, n_c, nb, *_check_layer0_trace(ev0, r, W, E, it, ctx.nc_max)))
                _check_layer1_trace(ev1, nb, n_c)
            if dtype == torch.float32:  # bitwise the same for every n_c and column-block count
                assert all(torch.equal(o, outs[0]) for o in outs[1:])
    finally:
        heap.close()
    return report


@pytest.mark.parametrize("world, E", [(2, 4), (4, 8)])
def test_fused_layers_equal_the_reference_over_three_epochs(world, E):
    """Zero-token ranks, skewed routing, an empty expert, dropped slots, staggered launches; fp32 within 1e-5 of
    the reference and of the sequential EP path; the tile order and waits from the kernels' trace."""
    configs = {0: [(2, 3)], 1: [(1, 2)], 2: [(4, 1)]}
    if world == 2:
        configs[0] += [(1, 1), (3, 2)]
    reports = shared_pool(world).run(_comet_job, E, "float32", 3, True, configs, timeout=400)
    # somewhere a rank computed its own rows and then remote ones: the order assertion was not vacuous
    assert any(loc and rem for rep in reports for (_, _, _, loc, rem) in rep)


def test_fused_layers_bf16():
    assert shared_pool(2).run(_comet_job, 4, "bfloat16", 1, False, {0: [(2, 2)]}, timeout=200)


def _errors_job(case: str):
    """E = 2 W experts, two per rank."""
    from tessera.distributed import parallel_state as ps
    from tessera.distributed.symm import SymmetricHeap
    from tessera.kernels.moe.comet_context import comet_heap_bytes, create_comet_context
    from tessera.kernels.moe.comet_layer0 import comet_layer0
    from tessera.kernels.moe.comet_layer1 import comet_layer1
    from tessera.kernels.moe.comet_tune import CometConfig

    r, W = ps.rank(), ps.world_size()
    heap = SymmetricHeap(comet_heap_bytes(W, 4, K, H, FF, 2 * W) if case != "heap too small" else 1 << 12)
    try:
        ctx = create_comet_context(heap, 4, K, H, FF, 2 * W, timeout_s=10)
        wgu, wd = _weights(2 * W, torch.float32)
        T = 6 if case == "over capacity" and r == 1 else 3
        x, ids, w = torch.randn(T, H), torch.randint(0, 2 * W, (T, K)), torch.rand(T, K)
        cfg = CometConfig(1 + r, 1) if case == "configs differ" else None
        act, lay = comet_layer0(x, ids, w, wgu[2 * r: 2 * r + 2], ctx, config=cfg)
        bad = wd[2 * r: 2 * r + 2, :, :-1] if case == "bad w_down" and r == 0 else wd[2 * r: 2 * r + 2]
        comet_layer1(act, bad, lay, ctx)
    finally:
        heap.close()


@pytest.mark.parametrize("case, message", [
    ("heap too small", "comet: the heap has"),
    ("over capacity", "comet layer0: invalid arguments on rank(s) [1]"),
    ("configs differ", "ranks asked for different (n_c, n_blocks)"),
    ("bad w_down", "comet layer1: invalid arguments on rank(s) [0]"),
])
@pytest.mark.parametrize("world", [2, 4])
def test_errors_raise_on_every_rank(case, message, world):
    with pytest.raises(RankFailure) as ei:
        shared_pool(world).run(_errors_job, case, timeout=90)
    assert set(ei.value.errors) == set(range(world))
    assert all(message in e for e in ei.value.errors.values()), ei.value.errors


def test_virtual_ranks_in_one_process_use_the_tuner_and_match_the_reference():
    """W = 2 virtual ranks (one heap allocation, the rank on grid axis 1: the GPU check's mode) with no fixed
    configuration, so (n_c, n_blocks) comes from comet_tune."""
    from tessera.distributed.symm import VirtualHeap
    from tessera.kernels.moe.comet_context import comet_heap_bytes, create_comet_context
    from tessera.kernels.moe.comet_layer0 import comet_layer0
    from tessera.kernels.moe.comet_layer1 import comet_layer1
    from tessera.kernels.moe.comet_ref import layer0_ref, moe_ref

    W, E = 2, 4
    wgu, wd = _weights(E, torch.float32)
    heap = VirtualHeap(comet_heap_bytes(W, CAP, K, H, FF, E, virtual=True), W)
    ctx = create_comet_context(heap, CAP, K, H, FF, E, timeout_s=10)
    xs, ids, ws = zip(*[_inputs(r, 1, E) for r in range(W)])
    acts, lays = comet_layer0(list(xs), list(ids), list(ws), [wgu[:2], wgu[2:]], ctx)
    assert lays[0].config == lays[1].config  # every rank picked the same
    assert lays[0].config_source.split(",")[0] in ("cache", "shipped", "rule")
    outs = comet_layer1(acts, [wd[:2], wd[2:]], lays, ctx)
    for r in range(W):
        assert _rel(acts[r], layer0_ref(list(xs), list(ids), wgu, r)) <= 1e-5
        assert _rel(outs[r], moe_ref(xs[r], ids[r], ws[r], wgu, wd)) <= 1e-5
    heap.close()
