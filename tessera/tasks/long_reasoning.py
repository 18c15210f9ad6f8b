"""Long reasoning traces (8K-16K tokens) for testing decode-time KV compression where R-KV makes its claim.

R-KV (Cai et al., arXiv 2505.24133) is lossless at budgets of >= ~1K tokens on R1-style traces of ~15K
tokens whose redundancy is *repeated content*: the model re-verifies steps and restates the problem in
other words. `reasoning.py`'s traces are ~1.6K tokens and repeat *token identity* (every step is the same
dozen words), so neither the budget regime nor the kind of redundancy matches. This task does:

- A register and a rule `x -> x * a + b + d` (mod 10), where d is the last digit of the count-down of steps
  still to do, applied 150-270 times: prompt + trace are 8.5K-15.5K tokens (`make_problem(seed)`; fewer steps
  with `difficulty`, for a training curriculum). The d term spaces out word-for-word repeats of a work
  line to 10-40 steps (0.5K-2K tokens): without it a mod-10 register cycles within four steps and every
  other line is an exact copy (as in `reasoning.py`).
- Every step is worked out ("step . 3 * 7 = 21 , 21 + 4 = 25 , 25 + 6 = 31 , mod 10 is 1 . so the
  register is 1 , 1 2 5 times ."); everything it needs is local (the previous result, the rule's digits in
  the previous step, the count-down just written).
- Redundancy is paraphrase: when the count-down is even the step is verified again in one of three
  wordings (forward, backward, through the rule), and every 100 steps the far facts are restated in one of
  three wordings with the facts in a different order. A repeat carries the same content with other tokens
  in another order, so key similarity has to recognise content, not copies.
- The answer needs recent state and far facts: (first result + last result + the special magic number)
  mod 10. The magic number is stated only in the prompt and in the restatements (the last one 100 steps,
  ~5.5K tokens, before the end: beyond every budget of 1K-3K), the first result after step 1 and in the
  restatements.

The wording is chosen per problem by its seed; the *schedule* (when to verify, when to restate) follows
from the count-down just written, so a model can decide it locally. Every word is in the embedded
tokenizer's vocabulary (`tessera.tasks.vocabulary()`), one token per word, so word counts are token counts.
Everything is a pure function of (seed, difficulty).
"""

from __future__ import annotations

import random

from tessera.tasks.reasoning import EVAL_SEED_BASE, Problem, extract_answer

__all__ = ["EVAL_SEED_BASE", "MAX_SOLUTION_TOKENS", "Problem", "extract_answer", "make_problem", "score"]

MOD = 10
STEPS = (150, 270)  # default range of steps: prompt + trace of ~8.5K-15.5K tokens
MAX_STEPS = 999  # the count-down is written as three digits
RESTATE_EVERY = 100  # restate the far facts when the count-down is a multiple of this
MAGIC = (10, 72)  # the magic number: first + last + magic <= 90, the largest number word
#: generation cap: the longest default trace (380 steps) is ~15.6K tokens
MAX_SOLUTION_TOKENS = 16384


def _d3(n: int) -> list[str]:
    return [str(n // 100), str(n // 10 % 10), str(n % 10)]


def _work(x: int, a: int, b: int, d: int) -> list[str]:
    """`step . 3 * 7 = 21 , 21 + 4 = 25 , 25 + 6 = 31 , mod 10 is 1 .` (d: the count-down's last digit)"""
    p, s, t = x * a, x * a + b, x * a + b + d
    return ["step", ".", str(x), "*", str(a), "=", str(p), ",", str(p), "+", str(b), "=", str(s), ",",
            str(s), "+", str(d), "=", str(t), ",", "mod", "10", "is", str(t % MOD), "."]


def _verify(style: int, x: int, a: int, b: int, d: int) -> list[str]:
    """The same check in three wordings: forward, backward, through the rule."""
    p, s, t = x * a, x * a + b, x * a + b + d
    p_, s_, t_, y_, x_, a_, b_, d_ = map(str, (p, s, t, t % MOD, x, a, b, d))
    head = ["wait", ",", "let", "me", "verify"]
    if style == 0:
        return head + [":", x_, "*", a_, "is", p_, ",", "and", p_, "+", b_, "is", s_, ",", "and", s_, "+", d_, "is",
                       t_, ",", t_, "mod", "10", "is", y_, ".", "yes", ",", y_, "is", "correct", "."]
    if style == 1:
        return head + [":", y_, "is", t_, "mod", "10", ",", "and", t_, "=", s_, "+", d_, ",", "and", s_, "=", p_,
                       "+", b_, ",", "and", p_, "=", x_, "*", a_, ".", "so", y_, "is", "correct", "."]
    return head + ["the", "rule", ":", "x", "->", "x", "*", a_, "+", b_, "+", d_, ",", "x", "is", x_, ",", "so", "x",
                   "*", a_, "+", b_, "+", d_, "is", t_, ",", "and", t_, "mod", "10", "is", y_, ".", "correct", "."]


def _rule(a: int, b: int) -> list[str]:
    """x -> x * a + b + (the last digit of the count-down), in the vocabulary's words."""
    return ["x", "->", "x", "*", str(a), "+", str(b), "+", "the", "last", "number", "of", "times"]


def _restate(t: int, a: int, b: int, first: int, magic: int) -> tuple[list[str], list[int]]:
    """The far facts in three wordings and orders -> (words, indices of the first result and magic number)."""
    rule = _rule(a, b)
    if t == 0:
        w = ["let", "me", "restate", ":", "the", "rule", "was", *rule, ".", "the", "first", "result", "was"]
        i = len(w)
        w += [str(first), ".", "the", "special", "magic", "number", "was", str(magic), "."]
        return w, [i, len(w) - 2]
    if t == 1:
        w = ["let", "me", "restate", "the", "question", ":", "the", "question", "asks", "for", "the", "sum", "of",
             "the", "first", "result", ",", "the", "last", "result", "and", "the", "magic", "number", ".", "the",
             "magic", "number", "is"]
        i = len(w)
        w += [str(magic), ".", "the", "first", "result", "is", str(first), "."]
        return w, [len(w) - 2, i]
    w = ["let", "me", "restate", ":", str(first), "was", "the", "first", "result", ",", str(magic), "was", "the",
         "special", "magic", "number", ",", "and", "the", "rule", "is", *rule, "."]
    return w, [4, 10]


def make_problem(seed: int, difficulty: int | None = None) -> Problem:
    """Problem `seed` with `difficulty` steps (default: drawn from the seed in STEPS, traces of 8K-16K tokens)."""
    rng = random.Random(seed * 7919 + 4049)
    n = difficulty if difficulty is not None else rng.randint(*STEPS)
    if not 2 <= n <= MAX_STEPS:
        raise ValueError(f"difficulty must be in [2, {MAX_STEPS}], got {n}")
    a, b, magic = rng.randint(2, 8), rng.randint(1, 9), rng.randint(*MAGIC)  # x * a + b + d <= 90
    r = [rng.randrange(MOD)]
    for k in range(1, n + 1):
        r.append((r[-1] * a + b + (n - k + 1) % 10) % MOD)  # d: last digit of the count-down before step k
    answer = (r[1] + r[n] + magic) % MOD
    verify_style = rng.sample(range(3), 3)  # per-problem rotation of the wordings
    restate_style = rng.randrange(3)

    p = ["problem", ":", "a", "register", "starts", "at", str(r[0]), ".", "apply", "the", "rule", *_rule(a, b), ",",
         *_d3(n), "times", ".", "the", "special", "magic", "number", "is", str(magic), ".",
         "find", "the", "sum", "of", "the", "first", "result", ",", "the", "last", "result", "and", "the", "magic",
         "number", "mod", "10", "?", "think", ":"]
    s = ["let", "me", "work", "through", "the", "steps", "one", "by", "one", ".", "the", "rule", "is", *_rule(a, b),
         ","]
    far = [len(s), len(s) + 1, len(s) + 2]  # the step count, copied from the prompt
    s += [*_d3(n), "times", ".", "the", "register", "starts", "at", str(r[0]), ".",
          "the", "special", "magic", "number", "is", str(magic), "."]
    far.append(len(s) - 2)  # the magic number
    verifies = restates = 0
    for k in range(1, n + 1):
        left = n - k
        d = (left + 1) % 10
        s += _work(r[k - 1], a, b, d) + ["so", "the", "register", "is", str(r[k]), ",", *_d3(left), "times", "."]
        if k == 1:
            s += ["the", "first", "result", "is", str(r[1]), "."]
        if left % 2 == 0 and left:
            s += _verify(verify_style[verifies % 3], r[k - 1], a, b, d)
            verifies += 1
        if left % RESTATE_EVERY == 0 and left:
            w, idx = _restate((restate_style + restates) % 3, a, b, r[1], magic)
            far += [len(s) + i for i in idx]
            s += w
            restates += 1
    s += ["all", "steps", "done", ".", "let", "me", "restate", ":", "the", "first", "result", "was", str(r[1]), ".",
          "the", "special", "magic", "number", "was", str(magic), ".", "the", "last", "result", "is", str(r[n]), "."]
    far += [len(s) - 15, len(s) - 8]
    total = r[1] + magic + r[n]
    s += [str(r[1]), "+", str(magic), "+", str(r[n]), "=", str(total), ",", "mod", "10", "is", str(answer), ".",
          "answer", ":", str(answer)]
    return Problem(seed, n, " ".join(p), " ".join(s), answer, tuple(far))


def score(problem: Problem, generated: str) -> bool:
    return extract_answer(generated) == problem.answer
