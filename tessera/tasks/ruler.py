"""RULER-style synthetic long-context tasks (Hsieh et al., "RULER", arXiv 2404.06654), as used by
ShadowKV's accuracy evaluation (arXiv 2410.21465): needle retrieval with one or several keys, and
variable tracking. Written from the task descriptions, not from RULER's code.

Every task is a pure function of (seed, length): `length` is the context size in units of
`count_tokens` (default: whitespace words; pass a tokenizer's length function to size in tokens).
The haystack is RULER's "noise" filler (repeated short sentences), so retrieval is the only skill.
Scoring is RULER's string_match_all: the fraction of expected answers found in the output.

The embedded Tessera model has 4,096 positions and was not trained for retrieval, so it cannot run
these tasks at 4K-32K+; they are for models with long context windows.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
WORDS = ("apple", "river", "stone", "cloud", "tiger", "maple", "ocean", "piano", "amber", "falcon", "cedar",
         "violet", "copper", "meadow", "harbor", "lantern", "orbit", "quartz", "saddle", "thistle")
TASKS = ("niah_single", "niah_multikey", "variable_tracking")


@dataclass(frozen=True)
class LongProblem:
    task: str
    seed: int
    context: str
    question: str
    answers: tuple[str, ...]  # every one must appear in the output for full credit

    @property
    def prompt(self) -> str:
        return f"{self.context}\n\n{self.question}"


def _words(s: str) -> int:
    return len(s.split())


def _haystack(rng: random.Random, needles: list[str], length: int, count: Callable[[str], int]) -> str:
    """Filler up to `length` units with `needles` inserted at random depths (in needle order)."""
    sentences = FILLER.split(". ")
    sentences = [s.rstrip(".") + "." for s in sentences]
    budget = length - sum(count(n + " ") for n in needles)
    sizes = [count(s + " ") for s in sentences]  # counted per sentence: additive up to tokenizer merges
    body, used = [], 0
    while used + sizes[len(body) % len(sentences)] <= budget:
        used += sizes[len(body) % len(sentences)]
        body.append(sentences[len(body) % len(sentences)])
    depths = sorted(rng.randrange(len(body) + 1) for _ in needles)
    for offset, (d, needle) in enumerate(zip(depths, needles)):
        body.insert(d + offset, needle)
    return " ".join(body)


def _key(rng: random.Random) -> str:
    return "-".join(rng.sample(WORDS, 2))


def _number(rng: random.Random) -> str:
    return str(rng.randrange(1_000_000, 10_000_000))


def make_problem(task: str, seed: int, length: int = 4096, count_tokens: Callable[[str], int] = _words,
                 n_keys: int = 4, hops: int = 4, chains: int = 2) -> LongProblem:
    if task not in TASKS:
        raise ValueError(f"unknown RULER task {task!r}; known: {', '.join(TASKS)}")
    if length < 64:
        raise ValueError(f"length={length} is too short for a long-context task (>= 64)")
    rng = random.Random(f"{task}:{seed}:{length}")
    if task in ("niah_single", "niah_multikey"):
        k = 1 if task == "niah_single" else n_keys
        keys = []
        while len(keys) < k:  # distinct keys: a repeated key would make the question ambiguous
            key = _key(rng)
            keys.append(key) if key not in keys else None
        vals = [_number(rng) for _ in keys]
        needles = [f"One of the special magic numbers for {a} is: {b}." for a, b in zip(keys, vals)]
        target = rng.randrange(k)
        question = f"What is the special magic number for {keys[target]} mentioned in the provided text? Answer:"
        return LongProblem(task, seed, _haystack(rng, needles, length, count_tokens), question, (vals[target],))
    # variable tracking: chains of assignments; the question asks for every name bound to one value
    names = rng.sample([f"{a}{b}" for a in "ABCDEFGHJKLMNPQRSTUVWXYZ" for b in "ABCDEFGHJKLMNPQRSTUVWXYZ"],
                       chains * (hops + 1))
    values = rng.sample(range(10_000, 100_000), chains)
    needles, groups = [], []
    for c in range(chains):
        chain = names[c * (hops + 1):(c + 1) * (hops + 1)]
        needles_c = [f"VAR {chain[0]} = {values[c]}."] + [f"VAR {chain[i]} = VAR {chain[i - 1]}." for i in
                                                           range(1, len(chain))]
        needles.append(needles_c)
        groups.append(chain)
    # interleave chains but keep each chain in order, so every reference points backwards
    order = [c for c in range(chains) for _ in range(hops + 1)]
    rng.shuffle(order)
    pos = [0] * chains
    flat = []
    for c in order:
        flat.append(needles[c][pos[c]])
        pos[c] += 1
    question = (f"Find all variables that are assigned the value {values[0]} in the text above. "
                "Answer: the variables are")
    return LongProblem(task, seed, _haystack(rng, flat, length, count_tokens), question, tuple(groups[0]))


def score(problem: LongProblem, generated: str) -> float:
    """RULER string_match_all: fraction of expected answers present (case-insensitive)."""
    out = generated.lower()
    return sum(a.lower() in out for a in problem.answers) / len(problem.answers)
