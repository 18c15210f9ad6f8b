"""The reasoning tasks: deterministic, verifiable, long and redundant traces."""

import re
import statistics

import pytest

from tessera.tasks.reasoning import EVAL_SEED_BASE, extract_answer, make_problem, score, vocabulary


def execute(prompt: str) -> tuple[dict, int]:
    """Independent interpreter of a problem statement -> (register values, expected answer)."""
    start = prompt.index("start with") + len("start with")
    inits, rest = prompt[start:].split(". then compute", 1)
    vals = {}
    for m in re.finditer(r"(v\d+) = (\d+)", inits):
        vals[m[1]] = int(m[2])
    prog, question = rest.split("find the sum of", 1)
    for m in re.finditer(r"step \d+ : (v\d+) = (v\d+) ([-+*]) (v\d+)", prog):
        a, b = vals[m[2]], vals[m[4]]
        vals[m[1]] = {"+": a + b, "-": a - b, "*": a * b}[m[3]] % 10
    first, last = re.match(r" (v\d+) and (v\d+)", question).groups()
    return vals, (vals[first] + vals[last]) % 10


@pytest.mark.parametrize("seed", [0, 1, 7, EVAL_SEED_BASE, EVAL_SEED_BASE + 123])
def test_answer_and_every_claim_in_the_trace_are_right(seed):
    p = make_problem(seed)
    vals, ans = execute(p.prompt)
    assert p.answer == ans
    assert extract_answer(p.solution) == ans and score(p, p.solution)
    claims = re.findall(r"(v\d+) (?:=|is) (\d+) ", p.solution + " ")
    assert len(claims) > 3 * p.difficulty  # every value is written several times
    for reg, val in claims:
        assert vals[reg] == int(val), (reg, val)


def test_deterministic_and_difficulty():
    assert make_problem(42) == make_problem(42)
    assert make_problem(42).text != make_problem(43).text
    assert make_problem(5, difficulty=7).difficulty == 7
    with pytest.raises(ValueError, match="difficulty"):
        make_problem(5, difficulty=1)


def test_traces_are_long_and_use_the_vocabulary():
    vocab = set(vocabulary())
    lens = []
    for s in range(EVAL_SEED_BASE, EVAL_SEED_BASE + 200):
        p = make_problem(s)
        words = p.text.split()
        assert set(words) <= vocab
        lens.append(len(p.solution.split()))
    assert statistics.mean(lens) >= 1000
    assert max(lens) > 3000


def test_the_answer_needs_the_first_register():
    p = make_problem(3)
    first = p.solution.split("step 1 :")[1].split()[0]
    assert f"the first register {first} is" in p.solution
    assert "wait , let me verify" in p.solution


def test_extract_answer_edge_cases():
    assert extract_answer("blah answer : 7") == 7
    assert extract_answer("answer : 3 then answer : 5") == 5
    assert extract_answer("answer :") is None
    assert extract_answer("answer : x") is None
    assert extract_answer("") is None
