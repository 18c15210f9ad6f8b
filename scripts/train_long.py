"""Long-context stage: fine-tune the embedded model for RULER-style retrieval at 4K-32K+ tokens on a CPU.

Training at 16K-32K tokens costs ~15 s per sequence on 2 cores, so most steps use PoSE (Zhu et al.,
"PoSE: Efficient Context Window Extension of LLMs via Positional Skip-wise Training", arXiv 2309.10400):
a sequence of 0.1K-2K real tokens whose position ids jump once by a random skip, so that the relative
distances between the question and the needles cover the whole target window (`--pose-window`) while
the compute is that of a short sequence. A share of the batches (`--long-share`) are real 4K-8K
haystacks, so the attention also learns to stay sharp over many more filler tokens than a short
sequence has. Positions go from 4,096 to 65,536 by Llama-3.1 RoPE scaling (factor 16 on the wavelengths
longer than 4K, the short ones unchanged): the reasoning task's far copies are intact right away
(teacher-forced far-copy accuracy 97.9% before any step, vs 16.7% after raising the RoPE base to 500K,
which was tried first). Reasoning batches are replayed in between (`--ruler-share`), with the same
far-copy loss weight as `train_tiny.py`, so its accuracy is kept, and so are repeat-copy batches
(`--repeat-share`), which keep the induction head `train_tiny.py` grew before anything else: every RULER
look-up is one, and a model without it does not learn them (docs/shadowkv.md).

Each RULER sequence is one haystack followed by several of its questions with their answers; only the
answer tokens are in the loss. The vocabulary grows by the long-context words (`tessera.tasks.vocabulary`:
appended, so every existing id keeps its embedding row; new rows start small and random).

    python scripts/train_long.py --minutes 50   # reads and rewrites tessera/assets/tiny-reasoner
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import random
import time
from collections import deque
from dataclasses import replace
from pathlib import Path

import torch
import train_tiny
from train_tiny import _init_worker, cosine_lr, loss_fn, make_batches, train_step

from tessera.models import LlamaForCausalLM, load_model, save_model
from tessera.tasks import vocabulary
from tessera.tasks.reasoning import EVAL_SEED_BASE
from tessera.tasks.repeat import LENGTHS, copy_accuracy, held_out_batch, repeat_batch
from tessera.tasks.ruler import TASKS, make_problem
from tessera.tokenizer import build_word_tokenizer


def ruler_sequence(tok, rng: random.Random, seed: int, length: int, tasks=TASKS, vt_share: float | None = None):
    """-> (token ids, answer-token mask, look-up mask) for one haystack of `length` words with several
    questions. The look-up mask marks each answer's first token: the one retrieved from the haystack (a
    variable-tracking chain's head, found by its value; the later names are one-step look-ups given the
    previous one, so teacher forcing makes them easy and they would otherwise outweigh it 5 to 1).
    `vt_share`: share of variable-tracking haystacks (None: all tasks alike)."""
    vt = "variable_tracking"
    if vt_share is not None and vt in tasks:
        task = vt if rng.random() < vt_share else rng.choice([t for t in tasks if t != vt])
    else:
        task = rng.choice(tasks)
    # at least two chains when variable tracking is weighted up: a lone chain's head needs no value match
    p = make_problem(task, seed, length, n_keys=rng.randint(2, 6), hops=rng.randint(1, 5),
                     chains=rng.randint(2 if vt_share is not None else 1, 3))
    asked = list(p.questions)
    rng.shuffle(asked)
    ids = tok.encode(p.context)
    mask = [False] * len(ids)
    lookup = [False] * len(ids)
    asked = asked[:rng.randint(1, 6)]
    for i, (q, answers) in enumerate(asked):
        qi = tok.encode(q, add_bos=False)
        ai = tok.encode(" ".join(answers) + " .", add_bos=False) + ([tok.eos_id] if i == len(asked) - 1 else [])
        ids += qi + ai
        mask += [False] * len(qi) + [True] * len(ai)
        lookup += [False] * len(qi) + [True] + [False] * (len(ai) - 1)
    return ids, mask, lookup


def ruler_batch(tok, rng: random.Random, next_seed: int, length: int, batch: int, window: int, pose: bool,
                tasks=TASKS, vt_share: float | None = None):
    """-> ids [B, T], loss mask [B, T] (True where the token is a target), positions [B, T], look-up
    mask [B, T] (each answer's first token)."""
    seqs = [ruler_sequence(tok, rng, next_seed + i, length, tasks, vt_share) for i in range(batch)]
    T = max(len(s) for s, _, _ in seqs)
    ids = torch.full((batch, T), tok.pad_id, dtype=torch.long)
    mask = torch.zeros(batch, T, dtype=torch.bool)
    lookup = torch.zeros(batch, T, dtype=torch.bool)
    pos = torch.arange(T).repeat(batch, 1)
    for b, (s, m, lk) in enumerate(seqs):
        ids[b, :len(s)], mask[b, :len(m)], lookup[b, :len(lk)] = torch.tensor(s), torch.tensor(m), torch.tensor(lk)
        if pose and window > T:  # one skip, somewhere in the haystack: far needles look `window` away
            first_q = m.index(True) - 24 if True in m else len(s)
            split = rng.randrange(1, max(2, first_q))
            pos[b, split:] += rng.randrange(0, window - T)
    return ids, mask, pos, lookup


def vt_first_hop(fwd, problems) -> float:
    """Greedy accuracy of variable tracking's first answer (the chain head, found by its value): a chain
    solved token by token under teacher forcing can still start from the wrong chain, which the
    teacher-forced RULER accuracy hides (the committed weights of 2026-11-27: ~40% at 256-4K words).
    problems: (prompt ids [1, T], id of the head's name) pairs, encoded once."""
    return sum(int(fwd(ids)[0, -1].argmax()) == head for ids, head in problems) / len(problems)


def extend(model: LlamaForCausalLM, vocab_size: int, max_positions: int) -> LlamaForCausalLM:
    """A copy of `model` with `vocab_size` embedding rows (old rows kept, new rows N(0, 0.02)) and
    `max_positions` positions, reached by Llama-3.1 RoPE scaling: wavelengths longer than the trained
    window are slowed by max_positions / trained positions, the short ones (what local steps use) kept."""
    cfg = model.config
    if vocab_size < cfg.vocab_size:
        raise ValueError(f"the tokenizer has {vocab_size} words but the model {cfg.vocab_size}: not a prefix of it")
    scaling = cfg.rope_scaling or {"rope_type": "llama3", "factor": max_positions / cfg.max_position_embeddings,
                                   "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                   "original_max_position_embeddings": cfg.max_position_embeddings}
    new = LlamaForCausalLM(replace(cfg, vocab_size=vocab_size, rope_scaling=scaling, max_position_embeddings=max_positions))
    state = model.state_dict()
    emb = torch.randn(vocab_size, cfg.hidden_size) * 0.02
    emb[:cfg.vocab_size] = state["model.embed_tokens.weight"]
    state["model.embed_tokens.weight"] = emb
    if "lm_head.weight" in state:
        state["lm_head.weight"] = emb
    new.load_state_dict(state)
    return new


def build_batch(spec):
    """One batch from its spec (run in a worker process, or in the loop): ("repeat", seed, args...) ->
    (ids, mask); ("ruler", seed, args...) -> (ids, mask, positions, look-up mask); ("reason", first seed,
    tokens per batch) -> a block of 256 reasoning problems as ~60 length-bucketed batches; ("reason",) ->
    None (the loop takes the next batch of its current block)."""
    kind, *a = spec
    if kind == "repeat":
        return repeat_batch(random.Random(a[0]), *a[1:])
    if kind == "ruler":
        return ruler_batch(train_tiny._TOK, random.Random(a[0]), *a[1:])
    return make_batches(train_tiny._TOK, range(a[0], a[0] + 256), a[1]) if a else None


class Batches:
    """The training batches, planned by `plan` in the loop and built `depth` steps ahead in `pool`'s worker
    processes (`--workers`: on a GPU, building a batch in Python takes as long as the step itself); with
    no pool each is built when asked."""

    def __init__(self, plan, pool, depth: int, tokens_per_batch: int):
        self.plan, self.pool, self.depth, self.tokens = plan, pool, max(1, depth), tokens_per_batch
        self.ahead: deque = deque()  # (spec, AsyncResult)
        self.reason_seed = 500_000
        self._reason = None  # the next reasoning block, being built

    def next(self):
        """-> (spec, batch) of the next step."""
        if self.pool is None:
            spec = self.plan()
            return spec, build_batch(spec)
        while len(self.ahead) < self.depth:
            spec = self.plan()
            self.ahead.append((spec, self.pool.apply_async(build_batch, (spec,))))
        spec, job = self.ahead.popleft()
        return spec, job.get(timeout=600)

    def reason_block(self) -> list:
        """-> the next block of reasoning batches; with a pool, the one after it is built meanwhile."""
        def spec():
            self.reason_seed += 256
            return ("reason", self.reason_seed - 256, self.tokens)
        if self.pool is None:
            return build_batch(spec())
        block = (self._reason or self.pool.apply_async(build_batch, (spec(),))).get(timeout=600)
        self._reason = self.pool.apply_async(build_batch, (spec(),))
        return block


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--init-from", default="tessera/assets/tiny-reasoner")
    ap.add_argument("--out", default="tessera/assets/tiny-reasoner")
    ap.add_argument("--work", default="runs/long")
    ap.add_argument("--minutes", type=float, default=50.0, help="training budget (time spent in steps)")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--tokens-per-batch", type=int, default=8192)
    ap.add_argument("--ruler-share", type=float, default=0.7, help="share of steps on RULER (the rest: reasoning)")
    ap.add_argument("--long-share", type=float, default=0.15, help="share of RULER steps on real 4K-8K haystacks")
    ap.add_argument("--pose-window", type=int, default=40960, help="relative distances PoSE covers")
    ap.add_argument("--max-positions", type=int, default=65536, help="max_position_embeddings of the result")
    ap.add_argument("--warm", type=float, default=0.2, help="share of the budget on short needle retrieval only")
    ap.add_argument("--warm-tasks", default="niah_single,niah_multikey", help="RULER tasks of the warm phase")
    ap.add_argument("--ramp", type=float, default=0.3, help="share of the budget over which haystacks and window grow")
    ap.add_argument("--far-weight", type=float, default=20.0)
    ap.add_argument("--lookup-weight", type=float, default=1.0,
                    help="loss weight of each RULER answer's first token (the one retrieved from the haystack)")
    ap.add_argument("--vt-share", type=float, default=None,
                    help="share of RULER haystacks on variable tracking, with 2-3 chains (default: tasks alike, 1-3)")
    ap.add_argument("--repeat-share", type=float, default=0.0,
                    help="share of steps on repeat-copy (keeps the induction head train_tiny.py grew first; 0.05 in docs/shadowkv.md)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--device", default="cpu", help="cpu or cuda (the same recipe, many more steps per minute)")
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--workers", type=int, default=0, help="processes that build batches ahead (0: in the loop)")
    ap.add_argument("--eval-every", type=int, default=60, help="steps between evaluations (and saves)")
    ap.add_argument("--wall", action="store_true",
                    help="the budget counts wall time (batch building and evals too), not only the steps")
    args = ap.parse_args()
    if unknown := set(args.warm_tasks.split(",")) - set(TASKS):
        ap.error(f"--warm-tasks: unknown {sorted(unknown)}; known: {', '.join(TASKS)}")
    if args.vt_share is not None and not 0.0 <= args.vt_share <= 1.0:
        ap.error(f"--vt-share must be in [0, 1], got {args.vt_share}")

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    model = load_model(args.init_from)
    tok = build_word_tokenizer(vocabulary(), args.out, args.max_positions)
    old = model.config
    model = extend(model, tok.vocab_size, args.max_positions)
    print(f"vocab {old.vocab_size} -> {tok.vocab_size}; positions {old.max_position_embeddings} -> "
          f"{args.max_positions}; RoPE scaling {model.config.rope_scaling}", flush=True)
    _init_worker(args.out)
    # spawned, not forked: a child forked after torch ran its OpenMP pool (the model load above) can hang
    pool = mp.get_context("spawn").Pool(args.workers, _init_worker, (args.out,)) if args.workers else None
    model.to(args.device)
    dev = lambda *ts: tuple(t.to(args.device, non_blocking=True) for t in ts)  # noqa: E731
    fwd_c = model if args.no_compile else torch.compile(model, dynamic=True)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.05)

    # fixed held-out checks: RULER answer tokens (teacher forced) at 2K with PoSE distances and at 8K real,
    # and the reasoning task's far-copy accuracy (what the long-context training must not break)
    ev_rng = random.Random(7)
    ruler_eval = [dev(*ruler_batch(tok, ev_rng, EVAL_SEED_BASE + 10 * i, n, b, args.pose_window, pose)[:3])
                  for i, (n, b, pose) in enumerate([(2048, 4, True), (2048, 4, True), (8192, 1, False)])]
    vt_eval = {n: [(torch.tensor([tok.encode(p.prompt)], device=args.device), tok.encode(p.answers[0], add_bos=False)[0])
                   for p in (make_problem("variable_tracking", EVAL_SEED_BASE + 900_000 + s, n) for s in range(k))]
               for n, k in ((1024, 16), (4096, 8))}
    reason_eval = [dev(*b) for b in make_batches(tok, range(EVAL_SEED_BASE + 500_000, EVAL_SEED_BASE + 500_032),
                                                 args.tokens_per_batch, train_prompt=False)]
    rep_eval = dev(*held_out_batch(tok.vocab_size, tok.bos_id))
    log = open(work / "train.log", "a")

    def say(msg):
        print(msg, flush=True)
        log.write(msg + "\n")
        log.flush()

    def evaluate(step):
        model.eval()
        with torch.no_grad():
            r = [loss_fn(lambda x, p=p: fwd_c(x, p[:, :-1]), ids, m, torch.zeros_like(m))[2][m[:, 1:]]
                 for ids, m, p in ruler_eval]
            hits = [(loss_fn(fwd_c, i, m, f)[2], m[:, 1:], f[:, 1:]) for i, m, f in reason_eval]
            far = [h[f] for h, _, f in hits]
            # wrong trace tokens in 32 traces (~50K tokens): greedy solves a trace only if it makes none
            errors = sum(int((~h[m]).sum()) for h, m, _ in hits)
            with torch.autocast(args.device.split(":")[0], dtype=torch.bfloat16):
                vt = {n: vt_first_hop(fwd_c, ps) for n, ps in vt_eval.items()}
        say(f"eval step {step} ruler-acc(2K pose) {torch.cat(r[:2]).float().mean():.4f} "
            f"ruler-acc(8K) {r[2].float().mean():.4f} reasoning far-acc {torch.cat(far).float().mean():.4f} "
            f"trace errors {errors} vt-first-hop(1K/4K greedy) {vt[1024]:.2f}/{vt[4096]:.2f} "
            f"repeat-acc {copy_accuracy(fwd_c, *rep_eval):.4f}")

    budget, elapsed, step, tokens = args.minutes * 60, 0.0, 0, 0
    next_seed = 0  # next RULER problem seed

    def plan():
        """The next step's batch as a spec for `build_batch` (decided here, from the share of the budget
        spent, so that the workers only build)."""
        nonlocal next_seed
        t = elapsed / budget
        warm = t < args.warm  # phase 1: needle retrieval alone, in short haystacks at familiar distances
        if rng.random() < args.repeat_share:
            return ("repeat", rng.randrange(2**31), tok.vocab_size, 32, *LENGTHS, tok.bos_id)
        if rng.random() < (0.85 if warm else args.ruler_share):
            # then all tasks; haystacks grow to 2K and the PoSE window to --pose-window over --ramp of the
            # budget (a fresh retrieval head spreads its attention over the whole haystack, so the needle's
            # gradient is ~1/length: short first), and real 4K-8K haystacks join after the ramp
            ramp = 0.0 if warm else min(1.0, (t - args.warm) / args.ramp)
            if ramp == 1.0 and rng.random() < args.long_share:
                n = rng.choice([4096, 6144, 8192])
            else:
                n = rng.choice([x for x in (128, 256, 512, 1024, 1536, 2048) if x <= 256 * 8 ** ramp])
            window = int(4096 + (args.pose_window - 4096) * ramp)
            tasks = tuple(args.warm_tasks.split(",")) if warm else TASKS
            b = max(1, args.tokens_per_batch // n)
            next_seed += b
            return ("ruler", rng.randrange(2**31), next_seed - b, n, b, window, True, tasks, args.vt_share)
        return ("reason",)  # the next batch of the current reasoning block (Batches.reason_block)

    batches = Batches(plan, pool, 4 * args.workers, args.tokens_per_batch)
    reason_queue: list = []
    evaluate(0)
    t_start = time.time()
    while elapsed < budget:
        spec, batch = batches.next()
        if spec[0] == "repeat":
            ids, mask = dev(*batch)
            far, far_weight = torch.zeros_like(mask), 1.0
            fwd = fwd_c
        elif spec[0] == "ruler":
            ids, mask, pos, far = dev(*batch)
            far_weight = args.lookup_weight
            fwd = (lambda x, p=pos: fwd_c(x, p[:, :-1]))
        else:
            if not reason_queue:
                reason_queue = batches.reason_block()
                rng.shuffle(reason_queue)
            ids, mask, far = dev(*reason_queue.pop())
            far_weight = args.far_weight
            fwd = fwd_c
        assert next_seed < EVAL_SEED_BASE and batches.reason_seed < EVAL_SEED_BASE
        t0 = time.time()
        loss, acc = train_step(model, opt, fwd, ids, mask, far, far_weight, cosine_lr(args.lr, elapsed, budget, 30))
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()  # so that the time budget measures real work
        lr = opt.param_groups[0]["lr"]
        dt = time.time() - t0
        elapsed = time.time() - t_start if args.wall else elapsed + dt
        step, tokens = step + 1, tokens + ids.numel()
        if step % 10 == 0:
            say(f"step {step} loss {loss.item():.4f} acc {acc.item():.4f} T {ids.shape[1]} lr {lr:.2e} "
                f"{ids.numel() / dt:.0f} tok/s elapsed {elapsed / 60:.1f}/{args.minutes:.0f} min")
        if step % args.eval_every == 0:
            evaluate(step)
            save_model(model, args.out)
    evaluate(step)
    save_model(model, args.out)
    (work / "summary.json").write_text(json.dumps(dict(steps=step, tokens=tokens, minutes=elapsed / 60), indent=2))
    if pool:
        pool.terminate()
    say(f"done: {step} steps, {tokens / 1e6:.1f}M tokens, saved to {args.out}")


if __name__ == "__main__":
    main()
