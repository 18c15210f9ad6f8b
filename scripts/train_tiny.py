"""Train the embedded tiny reasoning model on the synthetic register-program traces.

Runs on a 2-core CPU: bf16 autocast (AMX where the CPU has it), `torch.compile` (about 2x the
tokens/s of eager mode here: the elementwise ops of a model this small cost as much as its matmuls),
a time-based cosine learning-rate schedule so that the run ends on time whatever the machine's
speed, checkpoints every few minutes and `--resume` to continue an interrupted run. The log reports
token accuracy and *value* accuracy (the `rk = D` look-ups that decide whether a solution is right).
With `--induction-steps`, a few hundred repeat-copy steps first grow an induction head
(`tessera.tasks.repeat`), and `--repeat-share` keeps it: the long-context stage (`train_long.py`) needs
it, and a model that learnt the reasoning task first never formed one (docs/shadowkv.md; not yet the
default: that recipe's reasoning accuracy is still below the committed weights').
Training seeds are < 1,000,000; evaluation seeds start at 1,000,000
(`tessera.tasks.reasoning.EVAL_SEED_BASE`), so the reported accuracy is on problems never seen in
training.

    python scripts/train_tiny.py --minutes 60 --out tessera/assets/tiny-reasoner   # what `make train` runs
    python scripts/train_tiny.py --induction-steps 1000 --repeat-share 0.1 ...    # induction head first (docs/shadowkv.md)
    python scripts/train_tiny.py --arch moe --induction-steps 1000 --weight-final-sum ...  # `make train-moe`'s first stage

`--arch moe` trains the embedded Mixture-of-Experts reasoner (Qwen2-MoE format, layer 0 dense, 8 experts, top-2,
which grows an induction head under `--induction-steps`; `--moe-layout mixtral`: every layer routed, the previous
reasoner, which grows none): the experts run through the fixed-capacity backend (static shapes, so `torch.compile`
takes the layer whole) and a Switch-Transformer load-balancing loss (`--aux-weight`) keeps routing from collapsing
onto a few experts.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from tessera.config import ModelConfig
from tessera.layers.moe import load_balancing_loss
from tessera.models import CausalLM, save_model
from tessera.tasks import vocabulary
from tessera.tasks.reasoning import EVAL_SEED_BASE, RESULT_WORDS, make_problem
from tessera.tasks.repeat import LENGTHS, copy_accuracy, held_out_batch, repeat_batch
from tessera.tokenizer import Tokenizer, build_word_tokenizer

MODEL = dict(
    hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=4,
    num_key_value_heads=2, head_dim=64, max_position_embeddings=4096, rope_theta=10000.0,
    rms_norm_eps=1e-6, tie_word_embeddings=True,
)
# The MoE reasoner (--moe-layout): the dense model's attention and 8 routed experts of width 256 (top-2: 512 active,
# vs 768 dense). `mixtral` (the previous weights): every layer routed. `dense0` (the committed weights): Qwen2-MoE
# format, layer 0 a dense 768-wide SwiGLU, layers 1-3 routed, no shared expert: the layout in which an MoE grows an
# induction head (docs/moe.md; Mixtral's config.json cannot say a layer is dense, Qwen3-MoE's per-head q/k norms grew none).
MOE_LAYOUTS = {
    "mixtral": dict(MODEL, model_type="mixtral", intermediate_size=256, moe_intermediate_size=256, num_experts=8,
                    num_experts_per_tok=2),
    "dense0": dict(MODEL, model_type="qwen2_moe", moe_intermediate_size=256, num_experts=8, num_experts_per_tok=2,
                   mlp_only_layers=(0,), norm_topk_prob=True, attention_bias=False),
}


_TOK = None


def _init_worker(tok_dir):
    global _TOK
    _TOK = Tokenizer(tok_dir)


# offsets from the trace's last `+` of the tokens --weight-final-sum weights: D, E, S, the mod-10 digit, the answer
FINAL_SUM = (-1, 1, 3, 8, 12)


def encode_problem(work):
    """(seed, short_share, weight_mod, weight_sum) -> (token ids of prompt + trace + </s>, prompt length, positions
    of the weighted targets: the far copies (the step count restated from the prompt and `r1` at the end), then
    with `weight_mod` the digit after every `mod 10 is` (--weight-mod-digits) and with `weight_sum` the question's
    sum `D + E = S , mod 10 is A . answer : A` (--weight-final-sum))."""
    s, short_share, weight_mod, weight_sum = work
    # `short_share` of the problems get 2..14 steps (a curriculum: the skills, lookups, copying and
    # the mod-10 tables, are the same at every length and far cheaper to learn short)
    d = 2 + s % 13 if (s * 2654435761 % 1000) / 1000 < short_share else None
    p = make_problem(s, d)
    prompt = _TOK.encode(p.prompt)
    trace = _TOK.encode(p.solution, add_bos=False)  # one token per word: far_copies index it directly
    weighted = list(p.far_copies)
    words = p.solution.split()
    if weight_mod:
        weighted += [i for i in range(3, len(words)) if words[i - 3:i] == ["mod", "10", "is"]]
    if weight_sum:
        # the sum is written once per trace (the steps multiply then add b): ~5 tokens in 1,600 that teach adding
        # two registers and copying r1 six words back, the tokens every miss of the dense0 MoE went wrong on
        plus = len(words) - 1 - words[::-1].index("+")
        weighted += [plus + o for o in FINAL_SUM]
    return prompt + trace + [_TOK.eos_id], len(prompt), [len(prompt) + i for i in weighted]


def make_batches(tok, seeds, tokens_per_batch, short_share=0.0, pool=None, train_prompt=True,
                 weight_mod=False, weight_sum=False):
    """Length-bucketed batches: (input_ids [B, T], loss mask [B, T], weighted targets [B, T]: the far copies, plus
    the mod-10 digits and the final sum with `weight_mod` / `weight_sum`)."""
    work = [(s, short_share, weight_mod, weight_sum) for s in seeds]
    items = pool.map(encode_problem, work, chunksize=64) if pool else [encode_problem(w) for w in work]
    items.sort(key=lambda x: len(x[0]))
    batches, cur = [], []
    for it in items:
        if cur and (len(cur) + 1) * len(it[0]) > tokens_per_batch:
            batches.append(cur)
            cur = []
        cur.append(it)
    if cur:
        batches.append(cur)
    out = []
    for b in batches:
        T = max(len(x[0]) for x in b)
        ids = torch.full((len(b), T), tok.pad_id, dtype=torch.long)
        mask = torch.zeros((len(b), T), dtype=torch.bool)
        far = torch.zeros((len(b), T), dtype=torch.bool)
        for i, (full, n_prompt, far_pos) in enumerate(b):
            ids[i, : len(full)] = torch.tensor(full)
            # predict the trace tokens (and </s>), and the prompt's too unless --no-train-prompt
            mask[i, (1 if train_prompt else n_prompt) : len(full)] = True
            far[i, far_pos] = True
        out.append((ids, mask, far))
    return out


_MOE_BLOCKS: list = []  # the MoE blocks of the model in training (their router logits feed the aux loss)
AUX_WEIGHT = [0.0]


def loss_fn(fwd, ids, mask, far, far_weight=1.0):
    """(loss, token accuracy, per-target hits [B, T-1]) over the unmasked targets; the far-copy
    targets count `far_weight` times in the loss (they are ~3 tokens in 1,600, and the ones that
    decide the answer: without the weight their gradient drowns in the local steps')."""
    with torch.autocast(ids.device.type, dtype=torch.bfloat16):
        logits = fwd(ids[:, :-1])  # [B, T-1, V]
    tgt = ids[:, 1:]
    m = mask[:, 1:]
    hit = logits.argmax(-1) == tgt  # [B, T-1]
    ce = F.cross_entropy(logits.float()[m], tgt[m], reduction="none")  # [N]
    w = 1.0 + (far_weight - 1.0) * far[:, 1:][m].float()  # [N]
    loss = (ce * w).sum() / w.sum()
    if _MOE_BLOCKS and AUX_WEIGHT[0] and _MOE_BLOCKS[0].last_router_logits is not None:
        aux = sum(load_balancing_loss(b.last_router_logits, b.gate.top_k) for b in _MOE_BLOCKS) / len(_MOE_BLOCKS)
        loss = loss + AUX_WEIGHT[0] * aux
    return loss, hit[m].float().mean(), hit


def cosine_lr(base: float, elapsed: float, budget: float, warmup: float) -> float:
    """Time-based schedule: linear warm-up over `warmup` seconds, cosine down to 5% at `budget` seconds."""
    return base * min(1.0, (elapsed + 1) / warmup) * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(elapsed / budget, 1.0))))


def train_step(model, opt, fwd, ids, mask, far, far_weight: float, lr: float):
    """One AdamW step at `lr` (gradients clipped to norm 1) -> (loss, token accuracy)."""
    for g in opt.param_groups:
        g["lr"] = lr
    model.train()
    loss, acc, _ = loss_fn(fwd, ids, mask, far, far_weight)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    return loss, acc


def value_targets(ids, mask, eq_id, is_result):
    """[B, T-1] True where the target is the D of `rk = D`: the look-ups a solution stands or falls
    on, and the tokens an earlier format of the task failed on while token accuracy looked fine."""
    prev = torch.cat([torch.zeros_like(ids[:, :1]), ids[:, :-2]], 1)  # token before the input token
    return mask[:, 1:] & (ids[:, :-1] == eq_id) & is_result.to(ids.device)[prev]


def count_targets(ids, mask, times_id):
    """[B, T-1] True where the target is a digit of a step count (`, 0 9 times`): in the trace, the
    count-down. Teacher-forced value and far-copy accuracy can be 1.0 while greedy traces fail here:
    a model with an induction head copied the previous count's tens digit at a borrow (`1 0` -> `1 9`)."""
    nxt = torch.cat([ids[:, 2:], torch.zeros_like(ids[:, :1])], 1)  # token after the target
    nxt2 = torch.cat([ids[:, 3:], torch.zeros_like(ids[:, :2])], 1)  # the one after that
    return mask[:, 1:] & ((nxt == times_id) | (nxt2 == times_id))


def final_sum_targets(ids, mask, plus_id):
    """[B, T-1] True where the target is D, E or S of the question's sum `D + E = S` (the row's last `+`):
    copied from six words back, from the line before, and added. Each is one token per ~1,600, invisible in
    token accuracy, yet every miss of the first dense-first-layer MoE reasoner went wrong at one of them."""
    B, T = ids.shape
    pos = torch.arange(T, device=ids.device).expand(B, T)
    last = torch.where(ids == plus_id, pos, -100).max(1).values  # [B] position of the last `+`
    out = torch.zeros((B, T - 1), dtype=torch.bool, device=ids.device)
    for o in FINAL_SUM[:3]:
        # a token at position p is the target at index p - 1
        idx = (last + o - 1).clamp(0, T - 2)
        out[torch.arange(B), idx] = last >= 0
    return out & mask[:, 1:]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="tessera/assets/tiny-reasoner")
    ap.add_argument("--work", default="runs/tiny", help="checkpoints and logs")
    ap.add_argument("--minutes", type=float, default=60.0, help="training budget (time spent in training steps)")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--tokens-per-batch", type=int, default=8192)
    ap.add_argument("--pool", type=int, default=512, help="problems generated per refill")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--short-share", type=float, default=0.7, help="share of short problems in the curriculum")
    ap.add_argument("--curriculum-minutes", type=float, default=30.0, help="curriculum phase length")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu", help="cpu or cuda (the same recipe, just faster)")
    ap.add_argument("--init-from", default=None, help="start from the weights of this HF dir")
    ap.add_argument("--warmup-seconds", type=float, default=60.0)
    ap.add_argument("--workers", type=int, default=0, help="processes generating problems (0 = inline)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    ap.add_argument("--no-compile", action="store_true",
                    help="skip torch.compile (it fuses the elementwise ops: about 2x tokens/s on the CPU)")
    ap.add_argument("--train-prompt", action=argparse.BooleanOptionalAction, default=True,
                    help="put the prompt tokens in the loss too (it is what taught the model to copy from the prompt)")
    ap.add_argument("--far-weight", type=float, default=20.0,
                    help="loss weight of the far-copy tokens (the restated step count, r1 at the end)")
    ap.add_argument("--induction-steps", type=int, default=0,
                    help="at most this many repeat-copy steps before anything else, stopping once the held-out "
                         "copy accuracy passes 0.9 (the induction head forms at ~450-600; 0 = skip, as the committed weights did)")
    ap.add_argument("--induction-lr", type=float, default=3e-3,
                    help="constant lr of that phase (at 1e-3 the head had not formed after 900 steps)")
    ap.add_argument("--repeat-share", type=float, default=0.0,
                    help="share of the later steps on repeat-copy, so that the reasoning task's positional "
                         "look-ups do not displace the head")
    ap.add_argument("--steps", type=int, default=0,
                    help="budget in optimizer steps instead of minutes (a loaded machine then takes longer, not "
                         "fewer steps); warm-up is --warmup-seconds / 2 steps, the curriculum the first "
                         "--curriculum-minutes / --minutes of them")
    ap.add_argument("--first-problem", type=int, default=0,
                    help="seed of the first training problem: a later stage can start past the problems the earlier "
                         "ones drew, and so see new ones (held-out problems start at 1,000,000)")
    ap.add_argument("--moe-layout", choices=sorted(MOE_LAYOUTS), default="dense0",
                    help="MoE: layer 0 dense (Qwen2-MoE, the committed weights) or every layer routed (Mixtral format)")
    ap.add_argument("--capacity-factor", type=float, default=1.25,
                    help="MoE: expert slots per expert during training, in units of the even share T k / E")
    ap.add_argument("--eval-every", type=int, default=50, help="teacher-forced held-out evaluation every N steps")
    ap.add_argument("--weight-mod-digits", action="store_true",
                    help="weight the digit after every 'mod 10 is' like the far copies (--far-weight): the slips "
                         "the first MoE reasoner made ('12 , mod 10 is 0')")
    ap.add_argument("--weight-final-sum", action="store_true",
                    help="weight the question's final sum (D, E, S, the mod-10 digit, the answer) like the far copies: "
                         "written once per trace, it is where the first dense-first-layer MoE reasoner failed")
    ap.add_argument("--arch", choices=("dense", "moe"), default="dense")
    ap.add_argument("--aux-weight", type=float, default=0.01,
                    help="MoE: weight of the load-balancing loss (1.0 = perfectly even routing)")
    args = ap.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    tok = build_word_tokenizer(vocabulary(), args.out, MODEL["max_position_embeddings"])
    eq_id = tok.encode("=", add_bos=False)[0]
    times_id = tok.encode("times", add_bos=False)[0]
    plus_id = tok.encode("+", add_bos=False)[0]
    is_result = torch.zeros(tok.vocab_size, dtype=torch.bool)  # [V] True for r0, r1, ..
    is_result[tok.encode(" ".join(RESULT_WORDS), add_bos=False)] = True
    cfg = ModelConfig(vocab_size=tok.vocab_size, bos_token_id=tok.bos_id, eos_token_id=tok.eos_id,
                      pad_token_id=tok.pad_id, **(MOE_LAYOUTS[args.moe_layout] if args.arch == "moe" else MODEL))
    model = CausalLM(cfg)
    for name, p in model.named_parameters():  # GPT-2-style small init keeps early training stable
        if p.dim() >= 2:
            torch.nn.init.normal_(p, std=0.02 / (math.sqrt(2 * cfg.num_hidden_layers) if "o_proj" in name or "down_proj" in name else 1))
    _MOE_BLOCKS[:] = model.moe_blocks().values()
    AUX_WEIGHT[0] = args.aux_weight
    for b in _MOE_BLOCKS:
        b.experts.backend = "capacity"  # training only: exact backends at inference (saved files carry no backend)
        b.experts.capacity_factor = args.capacity_factor
    if args.init_from:
        from tessera.models import load_model

        model.load_state_dict(load_model(args.init_from).state_dict())
        print(f"initialised from {args.init_from}", flush=True)
    model.to(args.device)
    fwd = model if args.no_compile else torch.compile(model, dynamic=True)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.05)
    state = {"step": 0, "elapsed": 0.0, "next_seed": args.first_problem, "tokens": 0, "induction_steps": 0}
    ckpt = work / "ckpt.pt"
    if args.resume and ckpt.is_file():
        saved = torch.load(ckpt, weights_only=False)
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["opt"])
        state = saved["state"]
        print(f"resumed at step {state['step']} after {state['elapsed'] / 60:.1f} min", flush=True)
    print(f"model: {model.num_parameters() / 1e6:.2f}M parameters, vocab {tok.vocab_size}", flush=True)

    # the schedule's clock: seconds spent in training steps, or optimizer steps with --steps
    budget = args.steps or args.minutes * 60
    warmup = args.warmup_seconds / 2 if args.steps else args.warmup_seconds
    curriculum_end = budget * args.curriculum_minutes / args.minutes

    def clock() -> float:
        return state["step"] if args.steps else state["elapsed"]

    pool = None
    if args.workers:
        import multiprocessing as mp

        _init_worker(args.out)
        pool = mp.get_context("fork").Pool(args.workers, _init_worker, (args.out,))
    else:
        _init_worker(args.out)
    # the trace tokens only: a prompt's random digits are unpredictable and would hide the ~1e-3 token error
    # rate that separates a 40% model from a 90% one (every trace is ~1,600 tokens; one wrong token fails it)
    # (and no extra weighted targets, so that far-acc is over the far copies alone; the sum has its own accuracy)
    eval_batches = make_batches(tok, range(EVAL_SEED_BASE + 500_000, EVAL_SEED_BASE + 500_064), args.tokens_per_batch,
                                train_prompt=False)
    eval_batches = [tuple(t.to(args.device) for t in b) for b in eval_batches]
    vals = [value_targets(i, m, eq_id, is_result) for i, m, _ in eval_batches]  # fixed: computed once
    fars = [f[:, 1:] for _, _, f in eval_batches]
    counts = [count_targets(i, m, times_id) for i, m, _ in eval_batches]
    sums = [final_sum_targets(i, m, plus_id) for i, m, _ in eval_batches]
    rep_eval = tuple(t.to(args.device) for t in held_out_batch(tok.vocab_size, tok.bos_id))

    def evaluate():
        model.eval()
        for b in _MOE_BLOCKS:
            b.stats.reset()
        with torch.no_grad():
            ev = [loss_fn(fwd, *b) for b in eval_batches]
        bal = " ".join(f"{b.stats.balancedness():.2f}" for b in _MOE_BLOCKS)  # mean / max tokens per expert

        def acc(masks):
            return sum(int(e[2][v].sum()) for e, v in zip(ev, masks)) / max(1, sum(int(v.sum()) for v in masks))

        msg = (f"eval step {state['step']} loss {sum(e[0].item() for e in ev) / len(ev):.4f} "
               f"tok-acc {sum(e[1].item() for e in ev) / len(ev):.5f} value-acc {acc(vals):.4f} far-acc {acc(fars):.4f} "
               f"count-acc {acc(counts):.4f} sum-acc {acc(sums):.4f} "
               f"repeat-acc {repeat_acc():.4f}")
        if bal:
            msg += f" balancedness {bal}"
        say(msg)

    def repeat_acc():
        model.eval()
        return copy_accuracy(fwd, *rep_eval)

    def repeat_step(lr):
        ids, mask = (t.to(args.device) for t in repeat_batch(rng, tok.vocab_size, 32, *LENGTHS, tok.bos_id))
        return train_step(model, opt, fwd, ids, mask, torch.zeros_like(mask), 1.0, lr)

    def say(msg):
        print(msg, flush=True)
        log.write(msg + "\n")
        log.flush()

    log = open(work / "train.log", "a")
    rng = random.Random(args.seed + state["step"] + state["induction_steps"])
    # induction head first: once the reasoning task's look-ups are solved positionally, training on
    # repeats no longer forms it (0.07 after 1,100 steps, docs/shadowkv.md)
    t0 = time.time()
    while state["step"] == 0 and state["induction_steps"] < args.induction_steps:
        repeat_step(args.induction_lr)
        state["induction_steps"] += 1
        if state["induction_steps"] % 50 == 0:
            acc = repeat_acc()
            say(f"induction step {state['induction_steps']} repeat-acc {acc:.4f} ({time.time() - t0:.0f} s)")
            if acc > 0.9:
                break
    if args.induction_steps and state["step"] == 0 and (acc := repeat_acc()) <= 0.9:
        say(f"warning: no induction head after {state['induction_steps']} repeat-copy steps (held-out copy accuracy "
            f"{acc:.3f}); RULER-style look-ups will not be learnt. Try more --induction-steps or another --seed.")
    last_ckpt = time.time()
    evaluate()  # where a resumed or initialised run starts from
    while clock() < budget:
        seeds = range(state["next_seed"], state["next_seed"] + args.pool)
        assert seeds[-1] < EVAL_SEED_BASE, "training would reach the held-out evaluation seeds"
        state["next_seed"] += args.pool
        short = args.short_share if clock() < curriculum_end else 0.0
        batches = make_batches(tok, seeds, args.tokens_per_batch, short, pool, args.train_prompt,
                               args.weight_mod_digits, args.weight_final_sum)
        rng.shuffle(batches)
        for ids, mask, far in batches:
            ids, mask, far = (t.to(args.device, non_blocking=True) for t in (ids, mask, far))
            t0 = time.time()
            lr = cosine_lr(args.lr, clock(), budget, warmup)
            if rng.random() < args.repeat_share:
                repeat_step(lr)
            loss, acc = train_step(model, opt, fwd, ids, mask, far, args.far_weight, lr)
            if args.device.startswith("cuda") and state["step"] % 10 == 9:
                torch.cuda.synchronize()  # so that the time budget measures real work
            dt = time.time() - t0
            state["elapsed"] += dt
            state["step"] += 1
            state["tokens"] += ids.numel()
            if state["step"] % 10 == 0:
                say(f"step {state['step']} loss {loss.item():.4f} tok-acc {acc.item():.4f} lr {lr:.2e} "
                    f"{ids.numel() / dt:.0f} tok/s elapsed {state['elapsed'] / 60:.1f} min"
                    + (f", step {state['step']}/{args.steps}" if args.steps else f"/{args.minutes:.0f} min"))
            if state["step"] % args.eval_every == 0:
                evaluate()
            if time.time() - last_ckpt > 180:
                torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "state": state}, ckpt)
                save_model(model, args.out)
                last_ckpt = time.time()
            if clock() >= budget:
                break
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "state": state}, ckpt)
    save_model(model, args.out)
    (work / "summary.json").write_text(json.dumps(state, indent=2))
    print(f"done: {state['step']} steps, {state['tokens'] / 1e6:.1f}M tokens, saved to {args.out}", flush=True)


if __name__ == "__main__":
    main()
