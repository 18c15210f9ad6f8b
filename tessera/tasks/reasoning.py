"""Synthetic reasoning problems with long, redundant chains of thought ("register programs").

A problem is a register that starts at a digit and a rule `x -> x * a + b` (mod 10) applied to it
`n_steps` times; the question combines the *first* intermediate result with the *last* one. The
reference solution is written the way R1-style reasoning models write: it restates the task, works
every step out in full ("step #5 . r4 = 3 . 3 * 3 = 9 , 9 + 7 = 16 , mod 10 is 6 . so r5 = 6 ,
1 5 times ."), counting down the steps still to do, stops every other step to say "wait , let me verify" and redoes it, restates the rule and the
results before answering, and finally needs `r1`, the result written at the very start of the
trace. So the trace holds real redundancy (every result is written several times) and a
long-range dependency, which is what decode-time KV compression (R-KV) is evaluated on.

Why the task looks the way it does: everything a step needs is *local* (the previous result was
written a few tokens back; the rule's digits follow the most recent `*` and `+`; whether to stop
follows from the count-down just written), and the one far look-up, `r1 = D`, has a one-token key. A 3-4M-parameter model learns local copying and the mod-10
tables in minutes on a CPU, but keyed retrieval from far back is slow to learn. Two earlier
designs taught us this: programs over 100 named registers (`vC = vA op vB`, 0.5B GPU tokens: a
third of the look-ups wrong), and a different random operation per step (`step #k +7 .`, 40 CPU
minutes: the model learned to copy an operation from its own earlier steps but not from the
prompt, about 10% right). A first version of this task stated "the last step is #N" instead of
counting down: the model never learned to copy the rare `#N` token from the prompt, so it never
stopped.

Everything is a pure function of `(seed, difficulty)`: the same seed always gives the same
problem, on every machine. Text is whitespace-separated words; the embedded tokenizer maps each
word to one token, so word counts are token counts.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

MOD = 10
VERIFY_EVERY = 2  # a "wait , let me verify" loop after every 2nd step
MAX_STEPS = 99  # the count-down is written as two digits

#: Words that can appear in a problem or a trace. The tokenizer is built from this list.
NUMBER_WORDS = [str(i) for i in range(0, 91)]  # x * a <= 81, x * a + b <= 90
# Words #100..#120, r100..r120 and "many" are never written now (difficulty <= MAX_STEPS); they stay
# so that the vocabulary, and with it the committed tokenizer and embedding, keep their shape.
STEP_WORDS = [f"#{i}" for i in range(1, 121)]  # "#k": step k
RESULT_WORDS = [f"r{i}" for i in range(121)]  # rk: the register after step k
TEXT_WORDS = (
    "problem : a register starts at . apply the rule x -> * + , times the last step is find sum "
    "of first result and mod 10 ? think let me work through steps one by = is so wait verify yes "
    "correct all done restate rule was results question asks for answer"
).split()
#: Training uses seeds below this; every accuracy we report uses seeds from here on.
EVAL_SEED_BASE = 1_000_000
# Generation cap for a solution: the longest traces (69 steps) with their prompt are ~3,700 tokens; a model
# with a long context window must not spin on to its 65K positions when it fails to stop.
MAX_SOLUTION_TOKENS = 4096


def solution_budget(max_positions: int) -> int:
    """`max_new_tokens` for solving a problem with a model of `max_positions` positions."""
    return min(max_positions, MAX_SOLUTION_TOKENS)


@dataclass(frozen=True)
class Problem:
    seed: int
    difficulty: int  # number of steps
    prompt: str  # ends with "think :"; the model continues from here
    solution: str  # the chain of thought, ending with "answer : D"
    answer: int
    #: indices into `solution.split()` of the words copied from far back: the step count restated
    #: from the prompt (two digits) and `r1`'s value at the end. They are a handful of tokens in a
    #: thousand, yet every wrong answer of the embedded model traced back to one of them, so
    #: training weights them up and logs their accuracy.
    far_copies: tuple[int, ...] = ()

    @property
    def text(self) -> str:
        return f"{self.prompt} {self.solution}"


def _work(k: int, x: int, a: int, b: int) -> list[str]:
    """Step k from the register before it: `step #k . r4 = 3 . 3 * 3 = 9 , 9 + 7 = 16 , mod 10 is 6 .`"""
    return ["step", f"#{k}", ".", f"r{k - 1}", "=", str(x), ".", str(x), "*", str(a), "=", str(x * a), ",",
            str(x * a), "+", str(b), "=", str(x * a + b), ",", "mod", "10", "is", str((x * a + b) % MOD), "."]


def _digits(n: int) -> list[str]:
    """A count as two digit tokens, `30` -> `3 0`: the tiny model copies single digits from the
    prompt reliably but misreads whole-number tokens (it wrote 38 or 48 for 45)."""
    return [str(n // 10), str(n % 10)]


def make_problem(seed: int, difficulty: int | None = None) -> Problem:
    """Generate problem `seed`. `difficulty` = number of steps (default: drawn from the seed in
    [10, 69], skewed to short ones, so that traces average about 1,600 tokens, some pass 3,000,
    and prompt + trace stay under 4,096 positions)."""
    rng = random.Random(seed * 7919 + 17)
    n = difficulty if difficulty is not None else 10 + int(60 * rng.random() ** 2)
    if not 2 <= n <= MAX_STEPS:
        raise ValueError(f"difficulty must be in [2, {MAX_STEPS}], got {n}")
    a, b = rng.randint(2, 9), rng.randint(1, 9)
    r = [rng.randrange(MOD)]  # r[k]: the register after step k
    for _ in range(n):
        r.append((r[-1] * a + b) % MOD)
    answer = (r[1] + r[n]) % MOD

    p = ["problem", ":", "a", "register", "starts", "at", str(r[0]), ".", "apply", "the", "rule",
         "x", "->", "x", "*", str(a), "+", str(b), ",", *_digits(n), "times", ".", "find", "the", "sum", "of", "the", "first", "result",
         "and", "the", "last", "result", "mod", "10", "?", "think", ":"]

    s = ["let", "me", "work", "through", "the", "steps", "one", "by", "one", ".",
         "the", "rule", "is", "x", "->", "x", "*", str(a), "+", str(b), ",", *_digits(n), "times", ".",
         "the", "register", "starts", "at", "r0", "=", str(r[0]), "."]
    far = [s.index("times") - 2, s.index("times") - 1]
    for k in range(1, n + 1):
        # a count-down of the steps still to do: the stop decision stays local too
        s += _work(k, r[k - 1], a, b) + ["so", f"r{k}", "=", str(r[k]), ",", *_digits(n - k), "times", "."]
        if k % VERIFY_EVERY == 0:
            s += ["wait", ",", "let", "me", "verify"] + _work(k, r[k - 1], a, b)
            s += ["yes", ",", f"r{k}", "=", str(r[k]), "is", "correct", "."]
    s += ["all", "steps", "done", ".", "let", "me", "restate", ":", "the", "rule", "was", "x", "->",
          "x", "*", str(a), "+", str(b), ".", "the", "question", "asks", "for", "the", "sum", "of",
          "the", "first", "result", "and", "the", "last", "result", ".",
          "the", "first", "result", "r1", "=", str(r[1]), "."]
    far.append(len(s) - 2)
    s += ["the", "last", "result", f"r{n}", "=", str(r[n]), ".",
          str(r[1]), "+", str(r[n]), "=", str(r[1] + r[n]), ",", "mod", "10", "is", str(answer), ".",
          "answer", ":", str(answer)]
    return Problem(seed, n, " ".join(p), " ".join(s), answer, tuple(far))


def extract_answer(text: str) -> int | None:
    """The digit after the last `answer :` in a generated text, or None if there is none."""
    words = text.split()
    for i in range(len(words) - 2, -1, -1):
        if words[i] == "answer" and words[i + 1] == ":" and i + 2 < len(words):
            try:
                return int(words[i + 2])
            except ValueError:
                return None
    return None


def score(problem: Problem, generated: str) -> bool:
    return extract_answer(generated) == problem.answer


def vocabulary() -> list[str]:
    """Every word a problem or a trace can contain, in a fixed order."""
    seen: dict[str, None] = {}
    for w in NUMBER_WORDS + STEP_WORDS + RESULT_WORDS + TEXT_WORDS + ["many"]:
        seen.setdefault(w, None)
    return list(seen)
