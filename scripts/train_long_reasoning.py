"""Fine-tune the embedded reasoner on the long-trace task (tessera/tasks/long_reasoning.py, 8.5K-15.5K tokens).

The R-KV evaluation at the paper's budgets (1K-3K tokens) needs a model that solves 8K-16K-token traces with
full KV; the committed weights were trained on ~1.6K-token traces (`make train`) and have never seen this
format. This script starts from them (same vocabulary: the task uses only existing words; positions already
reach 65,536 through the long-context stage's RoPE scaling) and trains on a curriculum: a share of short
instances of the same format (`--short-steps`, 1K-3K tokens: the format, the count-down term and the
paraphrases are the same at any length and far cheaper to learn short), the rest full length, plus replayed
problems of the original task (`--replay-share`) so that its accuracy is kept. The far facts the answer needs
(the magic number and the first result, in the restatements and at the end) are weighted up in the loss
(`--far-weight`), as `train_tiny.py` does for its far copies. A held-out teacher-forced evaluation logs token,
far-copy and answer accuracy.

Resumable: a checkpoint every few minutes in `--work`, `--resume` continues it (`make train-long-reasoning`
does). It writes to `--out` (not the embedded model) until a run is good enough to commit.
`--probe N` times N steps of each length class and prints the wall-time estimate of the full recipe instead.

    python scripts/train_long_reasoning.py --steps 3000 --resume         # what `make train-long-reasoning` runs
    python scripts/train_long_reasoning.py --probe 3 --no-compile         # seconds per step on this machine
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import time
from pathlib import Path

import torch
from train_tiny import cosine_lr, loss_fn, train_step

from tessera.models import load_model, save_model
from tessera.tasks import long_reasoning, reasoning
from tessera.tasks.reasoning import EVAL_SEED_BASE
from tessera.tokenizer import Tokenizer


def encode(tok, problem):
    """-> (ids [prompt + trace + eos], index of the first trace token, far-copy target positions)."""
    prompt = tok.encode(problem.prompt)
    trace = tok.encode(problem.solution, add_bos=False)  # one token per word: far_copies index it
    return prompt + trace + [tok.eos_id], len(prompt), [len(prompt) + i for i in problem.far_copies]


def batch(tok, items, device):
    """items: encoded problems -> ids [B, T], loss mask [B, T] (trace tokens), far targets [B, T]."""
    T = max(len(x[0]) for x in items)
    ids = torch.full((len(items), T), tok.pad_id, dtype=torch.long)
    mask = torch.zeros(len(items), T, dtype=torch.bool)
    far = torch.zeros_like(mask)
    for i, (full, start, far_pos) in enumerate(items):
        ids[i, :len(full)] = torch.tensor(full)
        mask[i, start:len(full)] = True
        far[i, far_pos] = True
    return ids.to(device), mask.to(device), far.to(device)


def draw(rng, tok, seed, args):
    """One training batch: the kind by the shares, as many sequences as --tokens-per-batch holds."""
    u = rng.random()
    if u < args.replay_share:
        kind, make = "replay", lambda s: reasoning.make_problem(s)
    elif u < args.replay_share + args.short_share:
        kind, make = "short", lambda s: long_reasoning.make_problem(s, rng.randint(*args.short_steps))
    else:
        kind, make = "long", lambda s: long_reasoning.make_problem(s)
    items, n = [], 0
    while True:
        it = encode(tok, make(seed + len(items)))
        if items and n + len(it[0]) > args.tokens_per_batch:
            break
        items.append(it)
        n += len(it[0])
    return kind, items


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--init-from", default="tessera/assets/tiny-reasoner")
    ap.add_argument("--out", default="runs/train/long_reasoning/model")
    ap.add_argument("--work", default="runs/train/long_reasoning")
    ap.add_argument("--steps", type=int, default=3000, help="optimizer steps (a loaded machine takes longer, not fewer)")
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--warmup-steps", type=int, default=50)
    ap.add_argument("--tokens-per-batch", type=int, default=16384)
    ap.add_argument("--short-share", type=float, default=0.6)
    ap.add_argument("--short-steps", type=lambda s: tuple(map(int, s.split(","))), default=(20, 60))
    ap.add_argument("--replay-share", type=float, default=0.1)
    ap.add_argument("--far-weight", type=float, default=20.0)
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--probe", type=int, default=0, help="time this many steps per length class, print the estimate, exit")
    ap.add_argument("--probe-out", default=None, help="with --probe: also write the estimate to this JSON file")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    tok = Tokenizer(args.init_from)
    model = load_model(args.init_from).to(args.device)
    fwd = model if args.no_compile else torch.compile(model, dynamic=True)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.05)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    state = {"step": 0, "next_seed": 0, "elapsed": 0.0}
    ckpt = work / "ckpt.pt"
    if args.resume and ckpt.is_file():
        saved = torch.load(ckpt, weights_only=False)
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["opt"])
        state = saved["state"]
        print(f"resumed at step {state['step']}", flush=True)
    rng = random.Random(args.seed + state["step"])

    if args.probe:
        per = {}
        for kind, share in (("long", 1 - args.short_share - args.replay_share), ("short", args.short_share),
                            ("replay", args.replay_share)):
            probe = argparse.Namespace(**{**vars(args), "replay_share": float(kind == "replay"),
                                          "short_share": float(kind == "short")})
            times = []
            for i in range(args.probe + 1):  # the first step compiles / warms up: not counted
                _, items = draw(rng, tok, 10_000 * i, probe)
                ids, mask, far = batch(tok, items, args.device)
                t0 = time.perf_counter()
                train_step(model, opt, fwd, ids, mask, far, args.far_weight, args.lr)
                if i:
                    times.append(time.perf_counter() - t0)
            per[kind] = {"share": share, "s_per_step": sorted(times)[len(times) // 2], "tokens": int(ids.numel())}
        est = args.steps * sum(v["share"] * v["s_per_step"] for v in per.values())
        import os
        import platform

        res = {"per_kind": per, "steps": args.steps, "estimated_hours": est / 3600, "compiled": not args.no_compile,
               "torch_threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
               "load_average": os.getloadavg(), "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
               "command": "python " + " ".join(sys.argv)}
        print(json.dumps(res, indent=1), flush=True)
        if args.probe_out:
            Path(args.probe_out).write_text(json.dumps(res, indent=1) + "\n")
        return

    held = [long_reasoning.make_problem(EVAL_SEED_BASE + 700_000 + i) for i in range(4)]
    log = open(work / "train.log", "a")

    def say(msg):
        print(msg, flush=True)
        log.write(msg + "\n")
        log.flush()

    def evaluate():  # teacher-forced: token, far-copy and answer-token accuracy on 4 full-length problems
        model.eval()
        hits = {"tok": [], "far": [], "answer": []}
        with torch.no_grad():
            for p in held:
                ids, mask, far = batch(tok, [encode(tok, p)], args.device)
                _, _, hit = loss_fn(fwd, ids, mask, far)
                hits["tok"].append(hit[mask[:, 1:]].float().mean().item())
                hits["far"].append(hit[far[:, 1:]].float().mean().item())
                hits["answer"].append(hit[0, -2].item())  # the answer digit (the target before </s>)
        say(f"eval step {state['step']} " + " ".join(f"{k}-acc {sum(v) / len(v):.4f}" for k, v in hits.items()))

    evaluate()
    last = time.time()
    while state["step"] < args.steps:
        kind, items = draw(rng, tok, state["next_seed"], args)
        state["next_seed"] += len(items)
        assert state["next_seed"] < EVAL_SEED_BASE, "training would reach the held-out seeds"
        ids, mask, far = batch(tok, items, args.device)
        lr = cosine_lr(args.lr, state["step"], args.steps, args.warmup_steps)
        t0 = time.time()
        loss, acc = train_step(model, opt, fwd, ids, mask, far, args.far_weight, lr)
        state["elapsed"] += time.time() - t0
        state["step"] += 1
        if state["step"] % 10 == 0:
            say(f"step {state['step']}/{args.steps} {kind} loss {loss.item():.4f} tok-acc {acc.item():.4f} lr {lr:.2e} "
                f"{ids.numel() / (time.time() - t0):.0f} tok/s elapsed {state['elapsed'] / 3600:.2f} h")
        if state["step"] % args.eval_every == 0:
            evaluate()
        if time.time() - last > 300 or state["step"] == args.steps:
            torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "state": state}, ckpt)
            save_model(model, args.out)
            for f in Path(args.init_from).glob("*token*.json"):  # the tokenizer is unchanged: copy it beside
                shutil.copy(f, Path(args.out) / f.name)
            last = time.time()
    say(f"done: {state['step']} steps, saved to {args.out}")


if __name__ == "__main__":
    main()
