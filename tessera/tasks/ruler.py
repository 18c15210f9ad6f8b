"""RULER-style synthetic long-context tasks (Hsieh et al., "RULER", arXiv 2404.06654), as used by
ShadowKV's accuracy evaluation (arXiv 2410.21465): needle retrieval with one or several keys, and
variable tracking. Written from the task descriptions, not from RULER's code.

Every task is a pure function of (task, seed, length): `length` is the context size in units of
`count_tokens` (default: whitespace words, which are exactly the tokens of the embedded model's
word-level vocabulary; pass a tokenizer's length function to size in another model's tokens).
The haystack is RULER's "noise" filler (repeated short sentences), so retrieval is the only skill.

The text is lowercase words and separate punctuation drawn from `vocabulary()`, so that the
embedded model's word tokenizer covers it (any BPE tokenizer reads it too). Two departures from
RULER, both for that vocabulary: a key is two words ("apple river", RULER: "apple-river"; no word is
in two keys of one haystack) and a value is two numbers 10..90 ("57 32", RULER: a 7-digit number);
variables are `v0`..`v63`.
Scoring is RULER's string_match_all, on whole words: the fraction of expected answers found.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

FILLER = ("the grass is green .", "the sky is blue .", "the sun is yellow .", "here we go .",
          "there and back again .")
WORDS = ("apple", "river", "stone", "cloud", "tiger", "maple", "ocean", "piano", "amber", "falcon", "cedar",
         "violet", "copper", "meadow", "harbor", "lantern", "orbit", "quartz", "saddle", "thistle")
NAMES = tuple(f"v{i}" for i in range(64))
TASKS = ("niah_single", "niah_multikey", "variable_tracking")
_NIAH_Q = "what is the special magic number for {} mentioned in the provided text ? answer :"
_VT_Q = "find all variables that are assigned the value {} in the text above . answer : the variables are"


@dataclass(frozen=True)
class LongProblem:
    task: str
    seed: int
    context: str
    question: str
    answers: tuple[str, ...]  # every one must appear in the output for full credit
    # every question this context can answer, with its answers: the asked one first (training asks several)
    questions: tuple[tuple[str, tuple[str, ...]], ...] = ()

    @property
    def prompt(self) -> str:
        return f"{self.context}\n\n{self.question}"


def vocabulary() -> list[str]:
    """Every word a problem (context, question or answer) can contain, in a fixed order."""
    text = " ".join(FILLER + (_NIAH_Q.format(""), _VT_Q.format(""), "one of the special magic numbers for is : . var =")).split()
    seen = dict.fromkeys(text + list(WORDS) + list(NAMES) + [str(n) for n in range(10, 91)])
    return list(seen)


def _words(s: str) -> int:
    return len(s.split())


def _haystack(rng: random.Random, needles: list[str], length: int, count: Callable[[str], int]) -> str:
    """Filler up to `length` units with `needles` inserted at random depths (in needle order)."""
    budget = length - sum(count(n + " ") for n in needles)
    sizes = [count(s + " ") for s in FILLER]  # counted per sentence: additive up to tokenizer merges
    body, used = [], 0
    while used + sizes[len(body) % len(FILLER)] <= budget:
        used += sizes[len(body) % len(FILLER)]
        body.append(FILLER[len(body) % len(FILLER)])
    depths = sorted(rng.randrange(len(body) + 1) for _ in needles)
    for offset, (d, needle) in enumerate(zip(depths, needles)):
        body.insert(d + offset, needle)
    return " ".join(body)


def _value(rng: random.Random) -> str:
    return f"{rng.randrange(10, 91)} {rng.randrange(10, 91)}"


def make_problem(task: str, seed: int, length: int = 4096, count_tokens: Callable[[str], int] = _words,
                 n_keys: int = 4, hops: int = 4, chains: int = 2) -> LongProblem:
    if task not in TASKS:
        raise ValueError(f"unknown RULER task {task!r}; known: {', '.join(TASKS)}")
    if length < 64:
        raise ValueError(f"length={length} is too short for a long-context task (>= 64)")
    if chains * (hops + 1) > len(NAMES):
        raise ValueError(f"variable tracking has {len(NAMES)} names; {chains} chains of {hops} hops need more")
    rng = random.Random(f"{task}:{seed}:{length}")
    if task in ("niah_single", "niah_multikey"):
        k = 1 if task == "niah_single" else n_keys
        if 2 * k > len(WORDS):
            raise ValueError(f"{task}: at most {len(WORDS) // 2} keys (two distinct words each), got {k}")
        # no word in two keys, as RULER's random keys practically never share one: with shared words a
        # question could be answered only by matching both words in order (78% of 4-key haystacks did)
        words = rng.sample(WORDS, 2 * k)
        keys = [f"{words[2 * i]} {words[2 * i + 1]}" for i in range(k)]
        vals = [_value(rng) for _ in keys]
        needles = [f"one of the special magic numbers for {a} is : {b} ." for a, b in zip(keys, vals)]
        order = list(range(k))
        rng.shuffle(order)  # order[0] is the key asked
        qs = tuple((_NIAH_Q.format(keys[i]), (vals[i],)) for i in order)
        return LongProblem(task, seed, _haystack(rng, needles, length, count_tokens), *qs[0], qs)
    # variable tracking: chains of assignments; the question asks for every name bound to one value
    names = rng.sample(NAMES, chains * (hops + 1))
    values: list[str] = []
    while len(values) < chains:
        v = _value(rng)
        values.append(v) if v not in values else None
    needles, groups = [], []
    for c in range(chains):
        chain = names[c * (hops + 1):(c + 1) * (hops + 1)]
        needles.append([f"var {chain[0]} = {values[c]} ."] +
                       [f"var {chain[i]} = var {chain[i - 1]} ." for i in range(1, len(chain))])
        groups.append(tuple(chain))
    # interleave chains but keep each chain in order, so every reference points backwards
    order = [c for c in range(chains) for _ in range(hops + 1)]
    rng.shuffle(order)
    pos = [0] * chains
    flat = []
    for c in order:
        flat.append(needles[c][pos[c]])
        pos[c] += 1
    qs = tuple((_VT_Q.format(values[c]), groups[c]) for c in range(chains))
    return LongProblem(task, seed, _haystack(rng, flat, length, count_tokens), *qs[0], qs)


def score(problem: LongProblem, generated: str) -> float:
    """RULER string_match_all on whole words: fraction of expected answers present (case-insensitive;
    `v1` does not match inside `v12`)."""
    out = f" {' '.join(generated.lower().split())} "
    return sum(f" {a.lower()} " in out for a in problem.answers) / len(problem.answers)
