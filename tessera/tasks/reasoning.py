"""Synthetic reasoning problems with long, redundant chains of thought ("register programs").

A problem is a small program in single-assignment form: a few input registers with digits, then
`n_steps` operations `vC = vA op vB` (mod 10) over registers defined earlier, and a question that
combines the *first* computed register with the *last* one. The reference solution is written the
way R1-style reasoning models write: it restates the task, works each step out in full ("v3 is 4 .
v8 is 7 . 4 + 7 = 11 , mod 10 is 1"), stops every few steps to say "wait , let me verify" and
redoes an earlier step, restates all values before answering, and finally needs the value of a
register computed at the very start of the trace. So the trace holds real redundancy (every value
is written several times) and a long-range dependency, which is what decode-time KV compression
(R-KV) is evaluated on.

Everything is a pure function of `(seed, difficulty)`: the same seed always gives the same
problem, on every machine. Text is whitespace-separated words; the embedded tokenizer maps each
word to one token, so word counts are token counts.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

MOD = 10
N_REGISTERS = 100  # register names v0 .. v99
OPS = ("+", "-", "*")
VERIFY_EVERY = 3  # a "wait , let me verify" loop after every 3rd step

#: Words that can appear in a problem or a trace. The tokenizer is built from this list.
NUMBER_WORDS = [str(i) for i in range(-9, 82)]  # a-b in [-9, 9], a*b up to 81, step numbers < 82
REGISTER_WORDS = [f"v{i}" for i in range(N_REGISTERS)]
TEXT_WORDS = (
    "problem : registers start with . then compute ; find the sum of and mod 10 ? think "
    "let me work through steps one by step is , so = + - * wait verify correct yes . all done "
    "restate values question asks for answer the program has first last register value"
).split()
#: Training uses seeds below this; every accuracy we report uses seeds from here on.
EVAL_SEED_BASE = 1_000_000
MAX_STEPS = 81  # step numbers must stay number words


@dataclass(frozen=True)
class Problem:
    seed: int
    difficulty: int  # number of computed steps
    prompt: str  # ends with "think :"; the model continues from here
    solution: str  # the chain of thought, ending with "answer : D"
    answer: int

    @property
    def text(self) -> str:
        return f"{self.prompt} {self.solution}"


def _apply(op: str, a: int, b: int) -> int:
    return a + b if op == "+" else a - b if op == "-" else a * b


def _step_words(name: str, a: str, op: str, b: str, va: int, vb: int) -> list[str]:
    raw = _apply(op, va, vb)
    return [name, "=", a, op, b, ".", a, "is", str(va), ".", b, "is", str(vb), ".",
            str(va), op, str(vb), "=", str(raw), ",", "mod", "10", "is", str(raw % MOD), "."]


def make_problem(seed: int, difficulty: int | None = None) -> Problem:
    """Generate problem `seed`. `difficulty` = number of computed steps (default: drawn from the
    seed in [12, 61], skewed to short ones, so traces average about 1,400 tokens and the longest
    pass 3,000)."""
    rng = random.Random(seed * 7919 + 17)
    n_steps = difficulty if difficulty is not None else 12 + int(50 * rng.random() ** 2)
    if not 2 <= n_steps <= MAX_STEPS:
        raise ValueError(f"difficulty must be in [2, {MAX_STEPS}], got {n_steps}")
    n_inputs = rng.randint(3, 5)
    if n_inputs + n_steps > N_REGISTERS:
        raise ValueError(f"difficulty {n_steps} needs more than {N_REGISTERS} registers")
    names = rng.sample(REGISTER_WORDS, n_inputs + n_steps)
    values: dict[str, int] = {}
    for nm in names[:n_inputs]:
        values[nm] = rng.randrange(MOD)
    program = []  # (dst, a, op, b)
    for i in range(n_steps):
        defined = names[: n_inputs + i]
        # prefer recent registers (like real derivations) but reach far back now and then
        a = defined[-1 - min(int(rng.expovariate(0.3)), len(defined) - 1)]
        b = rng.choice(defined)
        op = rng.choice(OPS)
        dst = names[n_inputs + i]
        values[dst] = _apply(op, values[a], values[b]) % MOD
        program.append((dst, a, op, b))
    first, last = program[0][0], program[-1][0]
    answer = (values[first] + values[last]) % MOD

    p = ["problem", ":", "registers", "start", "with"]
    for j, nm in enumerate(names[:n_inputs]):
        p += [nm, "=", str(values[nm]), "," if j < n_inputs - 1 else "."]
    p += ["then", "compute"]
    for j, (dst, a, op, b) in enumerate(program):
        # numbered, so that "step k :" in the trace finds its operation by plain induction
        p += ["step", str(j + 1), ":", dst, "=", a, op, b, ";" if j < n_steps - 1 else "."]
    p += ["find", "the", "sum", "of", first, "and", last, "mod", "10", "?", "think", ":"]

    s = ["let", "me", "work", "through", "the", "program", "step", "by", "step", ".",
         "the", "program", "has", str(n_steps), "steps", "."]
    for i, (dst, a, op, b) in enumerate(program):
        s += ["step", str(i + 1), ":"] + _step_words(dst, a, op, b, values[a], values[b])
        s += ["so", dst, "=", str(values[dst]), "."]
        if (i + 1) % VERIFY_EVERY == 0:
            k = rng.randrange(i + 1)  # re-check an earlier step, sometimes far back
            vd, va, vo, vb = program[k]
            s += ["wait", ",", "let", "me", "verify", "step", str(k + 1), ":"]
            s += _step_words(vd, va, vo, vb, values[va], values[vb])
            s += ["yes", ",", vd, "=", str(values[vd]), "is", "correct", "."]
    s += ["all", "steps", "done", ".", "let", "me", "restate", "values", ":"]
    for j, (dst, *_rest) in enumerate(program):
        s += ["step", str(j + 1), ":", dst, "=", str(values[dst]), "," if j < n_steps - 1 else "."]
    vf, vl = values[first], values[last]
    s += ["the", "question", "asks", "for", "the", "sum", "of", first, "and", last, ".",
          "the", "first", "register", first, "is", str(vf), ".",
          "the", "last", "register", last, "is", str(vl), ".",
          str(vf), "+", str(vl), "=", str(vf + vl), ",", "mod", "10", "is", str(answer), ".",
          "answer", ":", str(answer)]
    return Problem(seed, n_steps, " ".join(p), " ".join(s), answer)


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
    for w in NUMBER_WORDS + REGISTER_WORDS + TEXT_WORDS + ["steps", "wait", "10", "?"]:
        seen.setdefault(w, None)
    return list(seen)
