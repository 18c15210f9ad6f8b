"""The long-trace reasoning task (tessera/tasks/long_reasoning.py): lengths, determinism, a computable
answer, paraphrased (not copied) redundancy, far facts, and the embedded tokenizer's vocabulary."""

import re

import pytest

from tessera.tasks import vocabulary
from tessera.tasks.long_reasoning import EVAL_SEED_BASE, MAX_SOLUTION_TOKENS, make_problem, score

SEEDS = range(EVAL_SEED_BASE, EVAL_SEED_BASE + 40)


def _solve_from_prompt(prompt: str) -> int:
    """The answer recomputed from the prompt's words alone (independent of the generator's trace)."""
    m = re.search(r"starts at (\d) \. apply the rule x -> x \* (\d) \+ (\d) \+ the last number of times , "
                  r"(\d) (\d) (\d) times \. the special magic number is (\d+) \.", prompt)
    x, a, b, n, magic = int(m[1]), int(m[2]), int(m[3]), int(m[4] + m[5] + m[6]), int(m[7])
    first = None
    for left in range(n, 0, -1):  # before step k the count-down reads `left`
        x = (x * a + b + left % 10) % 10
        first = x if first is None else first
    return (first + x + magic) % 10


def test_prompt_and_trace_are_8k_to_16k_tokens():
    lengths = [len(p.prompt.split()) + len(p.solution.split()) + 1 for p in map(make_problem, SEEDS)]
    assert 8000 <= min(lengths) and max(lengths) <= 16000 <= MAX_SOLUTION_TOKENS
    assert max(lengths) - min(lengths) > 3000  # a spread of lengths, not one size


def test_same_seed_same_problem_and_seeds_differ():
    assert make_problem(EVAL_SEED_BASE + 3) == make_problem(EVAL_SEED_BASE + 3)
    assert make_problem(EVAL_SEED_BASE + 3) != make_problem(EVAL_SEED_BASE + 4)
    assert make_problem(7, 20).difficulty == 20 and make_problem(7, 20).solution != make_problem(7, 21).solution


@pytest.mark.parametrize("steps", [None, 2, 20, 101, 230])
def test_the_answer_is_computable_and_the_trace_reaches_it(steps):
    for seed in list(SEEDS)[:10]:
        p = make_problem(seed, steps)
        assert p.answer == _solve_from_prompt(p.prompt)
        assert score(p, p.solution) and not score(p, p.solution[:-1] + str((p.answer + 1) % 10))


def test_every_word_is_in_the_embedded_vocabulary():
    vocab = set(vocabulary())
    for p in map(make_problem, list(SEEDS)[:10]):
        assert set(p.prompt.split()) | set(p.solution.split()) <= vocab


def test_redundancy_is_paraphrase_and_far_facts_are_far():
    p = make_problem(EVAL_SEED_BASE + 1, 230)
    w = p.solution.split()
    # three wordings of the verification: forward (x * a ...), backward (y is t mod 10 ...), through the rule
    verify = [i + 5 for i in range(len(w) - 8) if w[i:i + 5] == ["wait", ",", "let", "me", "verify"]]
    kinds = {"rule" if w[i] == "the" else "forward" if w[i + 2] == "*" else "backward" for i in verify}
    assert kinds == {"forward", "backward", "rule"}
    # the far facts restated in other words and orders (2 in the trace, then the end's)
    restate = [i for i in range(len(w) - 3) if w[i:i + 3] == ["let", "me", "restate"]]
    assert len(restate) == 3 and w[restate[0]:restate[0] + 8] != w[restate[1]:restate[1] + 8]
    # a work line recurs word for word only 10+ steps later (the count-down digit term; in reasoning.py the
    # register cycles within four steps, so every other line is a copy)
    lines = re.findall(r"step \. [^.]*\.", " ".join(w))
    assert len(lines) == 230
    seen = {}
    for k, line in enumerate(lines):
        assert k - seen.get(line, -10) >= 10
        seen[line] = k
    # the far facts the answer needs: the magic number and the first result, written 100 steps before the end
    assert restate[2] - restate[1] > 5000
    far = [w[i] for i in p.far_copies]
    magic = re.search(r"special magic number is (\d+)", p.prompt)[1]
    assert far.count(magic) >= 3 and w[p.far_copies[-1]] == magic


def test_bad_difficulty_is_a_clear_error():
    with pytest.raises(ValueError, match="difficulty"):
        make_problem(1, 1000)
