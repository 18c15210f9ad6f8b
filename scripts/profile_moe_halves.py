"""Profile the two halves of an MoE decoder layer for the disaggregation planner (MegaScale-Infer,
arXiv 2504.02263, §4.2): Ta = k1 ba + k2 (the attention half of one layer, decode, `ba` sequences at a
fixed context) and Te = k3 be + k4 (the FFN half of one layer, `be` (token, expert) rows), least-squares
fits with R^2, and optionally a gloo point-to-point curve (seconds per message size, receives posted
first) standing in for the M2N curve. Writes a `tessera.disagg.profile/1` file for `tessera plan`.

    python scripts/profile_moe_halves.py [--model moe] [--batch-sizes 1,2,4,8,16,32] [--context 256]
        [--tokens 1,4,16,64,128,256] [--reps 15] [--no-m2n] [--out benchmarks/results/moe_halves_profile_cpu]

One process, one thread by default (`--threads`), layer 0's attention and the first routed layer's FFN (every
routed layer has the same shapes); medians of
`--reps` calls after warm-up, spread as the min-max of those calls. On a shared machine the fits carry
the other jobs' noise: the output names the machine and says it was shared.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from machine import describe  # noqa: E402

from tessera.engine import LLM  # noqa: E402
from tessera.kv import make_cache  # noqa: E402
from tessera.kv.cache import StepContext  # noqa: E402
from tessera.kv.presses import NoPress  # noqa: E402
from tessera.parallel.disagg.planner import PROFILE_SCHEMA, fit_linear  # noqa: E402
from tessera.tasks.reasoning import EVAL_SEED_BASE, make_problem  # noqa: E402

OUT = Path(__file__).resolve().parent.parent / "benchmarks" / "results" / "moe_halves_profile_cpu"


def _time_all(fns: list, reps: int) -> list[tuple[float, float, float]]:
    """(median, min, max) seconds of each fn() over reps rounds after two warm-up rounds. Rounds run every
    fn once in turn, so a burst of load from other jobs lands on all sizes alike, not on one."""
    ts = [[] for _ in fns]
    for r in range(reps + 2):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            fn()
            if r >= 2:
                ts[i].append(time.perf_counter() - t0)
    return [(statistics.median(t), min(t), max(t)) for t in ts]


@torch.inference_mode()
def attention_times(llm, batch_sizes, context, reps):
    """One layer's attention half in a decode step: `b` sequences with `context` tokens of KV each."""
    model, cfg = llm.model, llm.config
    layer = model.model.layers[0]
    g = torch.Generator().manual_seed(0)
    fns = []
    for b in batch_sizes:
        cache = make_cache("dense", cfg, b, llm.dtype, llm.device, NoPress())
        ids = torch.randint(0, cfg.vocab_size, (b, context), generator=g)
        pos = torch.arange(context).expand(b, context)
        model(ids, pos, cache, StepContext(positions=pos, new_lens=torch.full((b,), context), is_prefill=True))
        tok = torch.randint(0, cfg.vocab_size, (b, 1), generator=g)
        dpos = torch.full((b, 1), context)
        x, step = model.embed(tok, dpos, cache, StepContext(positions=dpos, new_lens=torch.ones(b, dtype=torch.long),
                                                             is_prefill=False))
        # each call appends one key/value to layer 0: the context grows by reps + 2 tokens, which is noise here
        fns.append(lambda x=x, step=step: layer.attention_half(x, step))
    return [{"sequences": b, "context": context, "median_s": med, "min_s": lo, "max_s": hi}
            for b, (med, lo, hi) in zip(batch_sizes, _time_all(fns, reps))]


@torch.inference_mode()
def ffn_times(llm, token_counts, reps):
    """One layer's FFN half (router, experts, combine) on `t` tokens: t x top-k rows."""
    model, cfg = llm.model, llm.config
    first = min(model.moe_blocks())  # the first routed layer (a model may start with dense ones)
    layer = model.model.layers[first]
    # real hidden states: a held-out problem's prompt through the layers before it and this layer's attention
    ids = torch.tensor([llm.tokenizer.encode(make_problem(EVAL_SEED_BASE + 777_000 + j).prompt)[:256]
                        for j in range(4)])
    x, step = model.embed(ids)
    for before in model.model.layers[:first]:
        x = before.ffn_half(before.attention_half(x, step))
    h = layer.attention_half(x, step).reshape(-1, cfg.hidden_size)  # [4 * 256, H]
    fns = [lambda t=t: layer.ffn_half(h[:t][:, None]) for t in token_counts]  # [t, 1, H]: t decode tokens
    return [{"tokens": t, "rows": t * cfg.num_experts_per_tok, "median_s": med, "min_s": lo, "max_s": hi}
            for t, (med, lo, hi) in zip(token_counts, _time_all(fns, reps))]


def _p2p(rank: int, init: str, sizes: list[int], reps: int, out: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2,
                            timeout=__import__("datetime").timedelta(seconds=60))
    res = []
    for n in sizes:
        buf, back = torch.zeros(n // 4), torch.zeros(n // 4)
        ts = []
        for _ in range(reps + 2):
            if rank == 0:
                req = dist.irecv(back, src=1)  # posted before the send: gloo is ~8x slower otherwise
                t0 = time.perf_counter()
                dist.send(buf, dst=1)
                req.wait()
                ts.append((time.perf_counter() - t0) / 2)
            else:
                req = dist.irecv(buf, src=0)
                req.wait()
                dist.send(back, dst=0)
        res.append((n, statistics.median(ts[2:]) if rank == 0 else 0.0))
    if rank == 0:
        Path(out).write_text(json.dumps(res))
    dist.barrier()
    dist.destroy_process_group()


def p2p_curve(sizes, reps):
    """One-way seconds per message over loopback gloo (half a ping-pong), two processes."""
    import torch.multiprocessing as mp

    d = tempfile.mkdtemp(prefix="tessera_p2p_")
    out = os.path.join(d, "p2p.json")
    mp.start_processes(_p2p, args=(f"file://{d}/store", sizes, reps, out), nprocs=2, start_method="spawn", join=True)
    return json.loads(Path(out).read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="moe")
    ap.add_argument("--batch-sizes", default="1,2,4,8,16,32", help="decode sequences for the attention half")
    ap.add_argument("--context", type=int, default=256, help="KV tokens per sequence for the attention half")
    ap.add_argument("--tokens", default="1,4,16,64,128,256", help="tokens for the FFN half")
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--experts-per-group", type=int, default=4,
                    help="experts per expert rank in the plans (default 4: the 8 experts on 2 expert ranks)")
    ap.add_argument("--no-m2n", action="store_true", help="skip the gloo point-to-point curve")
    ap.add_argument("--m2n-sizes", default="4096,65536,262144,1048576")
    ap.add_argument("--shared", action="store_true", help="say the machine was shared with other jobs")
    ap.add_argument("--fit-on", default="median", choices=["median", "min"],
                    help="fit the medians (default) or the fastest calls (the least disturbed on a shared machine)")
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    llm = LLM.load(args.model)
    cfg = llm.config
    att = attention_times(llm, [int(b) for b in args.batch_sizes.split(",")], args.context, args.reps)
    ffn = ffn_times(llm, [int(t) for t in args.tokens.split(",")], args.reps)
    stat = f"{args.fit_on}_s"
    k1, k2, r2a = fit_linear([r["sequences"] for r in att], [r[stat] for r in att])
    k3, k4, r2e = fit_linear([r["rows"] for r in ffn], [r[stat] for r in ffn])
    m2n = None if args.no_m2n else p2p_curve([int(s) for s in args.m2n_sizes.split(",")], args.reps)

    params = {n: p.numel() * p.element_size() for n, p in llm.model.named_parameters()}
    expert_bytes = sum(v for n, v in params.items() if ".experts." in n) / cfg.num_experts
    act = torch.finfo(llm.dtype).bits // 8
    machine = describe() + (" (shared with other jobs: timings carry their noise)" if args.shared else "")
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    prof = {
        "schema": PROFILE_SCHEMA, "machine": machine, "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "command": " ".join(["python"] + sys.argv),
        "model": {"name": f"embedded MoE reasoner ({args.model})", "layers": cfg.num_hidden_layers,
                  "hidden": cfg.hidden_size, "num_experts": cfg.num_experts, "top_k": cfg.num_experts_per_tok,
                  "act_bytes": act,
                  "kv_bytes_per_token": 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * cfg.head_dim * act,
                  "attention_param_bytes": sum(params.values()) - expert_bytes * cfg.num_experts,
                  "expert_param_bytes": expert_bytes},
        "context": args.context, "experts_per_group": args.experts_per_group,
        "attention": {"1": {"k1": k1, "k2": k2, "r2": r2a, "points": att}},
        "expert": {"1": {"k3": k3, "k4": k4, "r2": r2e, "points": ffn}},
        "m2n": ({"points": m2n, "what": "gloo point-to-point over loopback, one-way (half a ping-pong), receive "
                 "posted first; not the M2N library"} if m2n else
                {"alpha_s": 2e-4, "bytes_per_s": 1e9, "what": "assumption: 200 us + 1 GB/s"}),
        "hardware": {"attention": {"memory_bytes": mem, "cost": 1.0}, "expert": {"memory_bytes": mem, "cost": 1.0}},
        "labels": {"k1,k2,k3,k4": f"measured: {machine}, {args.threads} thread(s), attention of layer 0, FFN of the first routed layer, fp32, fit on the {args.fit_on}s",
                   "m2n": "measured: loopback gloo on the same machine" if m2n else "assumption",
                   "memory": "this machine's RAM (every rank shares it)",
                   "expert fit": "the whole FFN half with all experts (router and combine included) against "
                                 "tokens x top-k rows; a group holding fewer experts is charged the same"},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(prof, indent=2) + "\n")
    md = ["# Layer halves of the embedded MoE reasoner, for the disaggregation planner\n",
          f"Machine: {machine}. {prof['date_utc']} UTC. Command: `{prof['command']}`. Medians of {args.reps} calls "
          f"(min-max beside), attention of layer 0 and FFN of the first routed layer, fp32; fits on the {args.fit_on}s.\n",
          f"Attention half, decode at context {args.context}: **Ta = {k1 * 1e6:.2f} us x sequences + "
          f"{k2 * 1e6:.1f} us** (R^2 {r2a:.3f})\n", "| sequences | median ms | min-max ms |", "|---|---|---|"]
    md += [f"| {r['sequences']} | {r['median_s'] * 1e3:.3f} | {r['min_s'] * 1e3:.3f}-{r['max_s'] * 1e3:.3f} |" for r in att]
    md += ["", f"FFN half (router, 8 experts, combine): **Te = {k3 * 1e6:.2f} us x rows + {k4 * 1e6:.1f} us** "
           f"(R^2 {r2e:.3f}; rows = tokens x top-{cfg.num_experts_per_tok})\n",
           "| tokens | rows | median ms | min-max ms |", "|---|---|---|---|"]
    md += [f"| {r['tokens']} | {r['rows']} | {r['median_s'] * 1e3:.3f} | {r['min_s'] * 1e3:.3f}-{r['max_s'] * 1e3:.3f} |"
           for r in ffn]
    if m2n:
        md += ["", "Point-to-point (gloo, loopback, one way, receive posted first): "
               + ", ".join(f"{b // 1024} KB {t * 1e3:.3f} ms" for b, t in m2n)]
    out.with_suffix(".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    print(f"wrote {out.with_suffix('.json')} and .md")


if __name__ == "__main__":
    main()
