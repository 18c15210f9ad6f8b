"""Disaggregated decoding over real gloo processes: attention ranks and expert ranks, micro-batches in
ping-pong, against the same model in one process (logits within 1e-5, identical greedy tokens)."""

import pytest
import torch

from tessera.distributed.testing import RankFailure, shared_pool

pytestmark = pytest.mark.dist


def _model():
    from tessera.config import ModelConfig
    from tessera.models import CausalLM

    torch.manual_seed(0)  # the same model on every rank
    cfg = ModelConfig(vocab_size=40, hidden_size=16, intermediate_size=24, num_hidden_layers=3, num_attention_heads=2,
                      num_key_value_heads=1, head_dim=8, model_type="qwen2_moe", num_experts=4, num_experts_per_tok=2,
                      moe_intermediate_size=12, shared_expert_intermediate_size=8, norm_topk_prob=False,
                      mlp_only_layers=(1,))  # layer 1 dense: it stays on the attention ranks
    model = CausalLM(cfg).eval()
    with torch.no_grad():
        for b in model.moe_blocks().values():
            b.gate.weight.normal_(0, 1.0)
    return model


def _prompts(attn_rank: int, n: int = 5):
    g = torch.Generator().manual_seed(100 + attn_rank)  # each attention rank its own sequences
    return [torch.randint(3, 40, (int(torch.randint(2, 9, (1,), generator=g)),), generator=g).tolist() for _ in range(n)]


def _greedy_reference(model, prompt, steps):
    seq = list(prompt)
    with torch.no_grad():
        for _ in range(steps):
            seq.append(int(model(torch.tensor([seq]))[0, -1].argmax()))
    return seq[len(prompt):]


def _disagg_job(attn: int, expert: int, m: int, steps: int, backend: str = "p2p", batch: bool = False):
    from tessera.config import SamplingParams
    from tessera.distributed import parallel_state as ps
    from tessera.engine.stopping import StopChecker
    from tessera.parallel.disagg import runtime

    model = _model()
    me = ps.rank()
    prompts = _prompts(me) if me < attn else []
    want = [_greedy_reference(model, p, steps) for p in prompts]
    with torch.no_grad():  # prefill logits of the whole batch, in one process
        ref_logits = [model(torch.tensor([p]))[0, -1] for p in prompts]
    d = runtime.setup(model, attn, expert, max_tokens=64, timeout_s=20, slots=max(4, m), backend=backend, batch=batch)
    try:
        if not d.is_attention:
            st = d.serve()
            return ("expert", st.requests, st.calls)
        # logits of one ping-pong forward over m micro-batches (one prompt each, no cache)
        inputs = [(torch.tensor([p]), None, None, None, None) for p in prompts[:m]]
        got = runtime.forward_micro_batches(model, [(i, torch.arange(i.shape[1])[None], c, x, li)
                                                    for i, _, c, x, li in inputs])
        diff = max((g[0, -1] - r).abs().max().item() for g, r in zip(got, ref_logits[:m]))
        sp = SamplingParams(max_new_tokens=steps, temperature=0.0)
        stops = d.generate(prompts, m, sp, lambda: StopChecker(sp, set(), lambda ids: ""))
        return ("attention", diff, [s.tokens for s in stops] == want, d.stats.requests)
    finally:
        ps.destroy_groups()


@pytest.mark.parametrize("attn, expert, m, backend, batch", [
    (1, 1, 1, "p2p", False), (1, 2, 2, "p2p", False), (2, 1, 4, "p2p", False), (2, 2, 3, "p2p", False),
    (1, 1, 5, "p2p", False),  # m 1..5
    (2, 2, 3, "heap", False), (1, 2, 2, "heap", False), (2, 2, 3, "heap", True), (2, 1, 2, "p2p", True)])
def test_disaggregated_decoding_matches_one_process(attn, expert, m, backend, batch):
    out = shared_pool(attn + expert).run(_disagg_job, attn, expert, m, 6, backend, batch, timeout=180)
    sent = 0
    for role, *rest in out[:attn]:
        diff, same_tokens, requests = rest
        assert role == "attention" and diff < 1e-5 and same_tokens
        assert requests >= 2 * (6 + 1) * min(m, 5)  # 2 MoE layers x (prefill + decode steps) x micro-batches
        sent += requests
    assert all(r[0] == "expert" for r in out[attn:])
    for _, served, calls in out[attn:]:
        assert served == sent and 0 < calls <= served
        if batch and attn > 1:  # the attention ranks' requests of a round share one expert call
            assert calls < served


def _bad_split_job():
    from tessera.parallel.disagg import runtime

    runtime.setup(_model(), 1, 3)


def test_experts_that_do_not_divide_over_the_expert_ranks_are_refused_on_every_rank():
    with pytest.raises(RankFailure) as ei:
        shared_pool(4).run(_bad_split_job, timeout=60)
    assert set(ei.value.errors) == {0, 1, 2, 3}
    assert all("num_experts=4 divisible by 3" in e for e in ei.value.errors.values())


def _dead_rank_job(who: str, backend: str = "p2p"):
    """One side dies right after setup: the other fails within its timeout with an error naming the wait."""
    import os

    from tessera.config import SamplingParams
    from tessera.distributed import parallel_state as ps
    from tessera.engine.stopping import StopChecker
    from tessera.parallel.disagg import runtime

    d = runtime.setup(_model(), 1, 1, max_tokens=64, timeout_s=5, backend=backend)
    if ps.role() == who:
        os._exit(17)
    if d.is_attention:
        sp = SamplingParams(max_new_tokens=4, temperature=0.0)
        d.generate(_prompts(0, 2), 1, sp, lambda: StopChecker(sp, set(), lambda ids: ""))
    else:
        d.serve()


@pytest.mark.parametrize("who, backend", [("expert", "p2p"), ("attention", "p2p"), ("expert", "heap")])
def test_a_side_that_dies_fails_the_other_within_its_timeout(who, backend):
    import glob
    import time

    from tessera.distributed.testing import RankPool

    before = set(glob.glob("/dev/shm/tessera_*"))
    pool = RankPool(2, gloo_timeout_s=5)  # its own pool: a rank of it dies
    t0 = time.monotonic()
    try:
        with pytest.raises(RankFailure) as ei:
            pool.run(_dead_rank_job, who, backend, timeout=60)
    finally:
        pool.stop()
    dead, alive = (1, 0) if who == "expert" else (0, 1)
    assert "exit code 17" in ei.value.errors[dead]
    assert "M2NError" in ei.value.errors[alive], ei.value.errors[alive]
    assert ("expert rank" if who == "expert" else "attention rank") in ei.value.errors[alive]
    assert time.monotonic() - t0 < 45
    assert set(glob.glob("/dev/shm/tessera_*")) <= before


def test_a_plan_file_from_tessera_plan_sets_the_launch(tmp_path):
    """`tessera plan --max-gpus 4` writes a plan the launcher reads; what this runtime cannot do is refused."""
    import json

    from tessera.cli import main
    from tessera.parallel.disagg import launch

    plan = tmp_path / "plan.json"
    assert main(["plan", "--profile", "benchmarks/results/moe_halves_profile_cpu.json", "--max-gpus", "4",
                 "--out", str(plan)]) == 0
    d = json.loads(plan.read_text())
    attn, expert, m = launch.parse(str(plan))
    assert (attn, expert, m) == (d["attention"]["ranks"], d["experts"]["ranks"], d["micro_batches"])
    assert attn + expert <= 4
    d["attention"]["tp"] = 2
    plan.write_text(json.dumps(d))
    with pytest.raises(ValueError, match="attention TP 2"):
        launch.parse(str(plan))
    d["attention"]["tp"], d["experts"]["placement"] = 1, [[0, 1, 2], [2, 3, 4]]
    plan.write_text(json.dumps(d))
    with pytest.raises(ValueError, match="replicates hot experts"):
        launch.parse(str(plan))
    plan.write_text("{")
    with pytest.raises(ValueError, match="not a plan file"):
        launch.parse(str(plan))


def test_more_micro_batches_than_result_slots_are_refused():
    """Results of a fifth micro-batch must not land in a slot whose results are still in flight."""
    from tessera.parallel.disagg.m2n import M2N

    m2n = M2N.__new__(M2N)  # the slot bookkeeping alone (no process group needed)
    m2n.slots, m2n._sent, m2n._busy, m2n.max_rows, m2n.experts, m2n.local, m2n.hidden = 4, 4, {0, 1, 2, 3}, 8, [1], 2, 4
    with pytest.raises(ValueError, match="fill all 4 result slots"):
        m2n._claim(torch.zeros(0, 4), torch.zeros(1, 2, dtype=torch.long))
    m2n._release(2)  # received out of order: slot 0 (the next one) is still busy
    with pytest.raises(ValueError, match="result slot 0 still holds"):
        m2n._claim(torch.zeros(0, 4), torch.zeros(1, 2, dtype=torch.long))
    m2n._release(0)
    assert m2n._claim(torch.zeros(3, 4), torch.tensor([[1, 2]])) == 0 and m2n._sent == 5
    with pytest.raises(ValueError, match="count matrix summing to the rows"):
        m2n._claim(torch.zeros(3, 4), torch.tensor([[1, 1]]))


def _press_job(m: int):
    """R-KV on the attention rank's micro-batch caches: the same tokens as the engine running the same press
    on each sequence alone (the press compresses each sequence by itself)."""
    from tessera.config import SamplingParams
    from tessera.distributed import parallel_state as ps
    from tessera.engine import LLM
    from tessera.engine.stopping import StopChecker
    from tessera.kv.presses import make_press
    from tessera.parallel.disagg import runtime

    model = _model()
    prompts = [p * 3 for p in _prompts(0, 4)] if ps.rank() == 0 else []  # longer than the budget
    sp = SamplingParams(max_new_tokens=10, temperature=0.0)
    press = lambda: make_press("rkv", budget=8, buffer=4, window=2)  # noqa: E731
    want = [LLM(model).generate([p], sp, press=press()).completions[0].token_ids for p in prompts]
    full = [LLM(model).generate([p], sp).completions[0].token_ids for p in prompts]
    assert ps.rank() != 0 or want != full  # the budget is small enough that compression changes tokens
    d = runtime.setup(model, 1, 1, max_tokens=128, timeout_s=20)
    try:
        if not d.is_attention:
            return d.serve().requests
        stops = d.generate(prompts, m, sp, lambda: StopChecker(sp, set(), lambda ids: ""), press_factory=press)
        return [s.tokens for s in stops] == want
    finally:
        ps.destroy_groups()


def test_presses_run_on_the_attention_ranks():
    same, served = shared_pool(2).run(_press_job, 2, timeout=180)
    assert same is True and served > 0


def test_the_m2n_options_reach_the_launcher_and_heap_is_refused_on_gpus(monkeypatch):
    from types import SimpleNamespace

    from tessera.cli import build_parser
    from tessera.parallel.disagg import launch

    args = build_parser().parse_args(["generate", "--disagg", "attn=1,expert=1", "--m2n", "heap", "--batch-experts"])
    assert (args.m2n, args.batch_experts) == ("heap", True)
    assert build_parser().parse_args(["generate"]).m2n == "p2p"
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    cfg = SimpleNamespace(num_experts=4)
    assert launch.check(args, cfg) == (1, 1, 2)
    args.device = "cuda"
    with pytest.raises(ValueError, match="--m2n heap runs on CPU ranks"):
        launch.check(args, cfg)
