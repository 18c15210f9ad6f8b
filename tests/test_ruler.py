"""RULER-style generators: deterministic per seed, sized as asked, answerable from the context."""

import re

import pytest

from tessera.tasks.ruler import TASKS, make_problem, score, vocabulary


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("length", [4096, 32768])
def test_deterministic_sized_and_answerable(task, length):
    p = make_problem(task, seed=3, length=length)
    assert p == make_problem(task, seed=3, length=length)
    assert make_problem(task, seed=4, length=length).prompt != p.prompt
    n = len(p.context.split())
    assert 0.95 * length <= n <= length + 16, n
    for a in p.answers:
        assert a in p.context
    assert score(p, " ".join(p.answers)) == 1.0
    assert score(p, "no idea") == 0.0


def test_niah_multikey_distinct_keys_and_target_needle():
    p = make_problem("niah_multikey", seed=7, length=4096, n_keys=5)
    keys = re.findall(r"numbers for (\w+ \w+) is : (\d+ \d+) \.", p.context)
    assert len(keys) == 5 and len({k for k, _ in keys}) == 5
    words = [w for k, _ in keys for w in k.split()]
    assert len(set(words)) == 10  # no word in two keys: one matching word identifies the needle, as in RULER
    asked = re.search(r"number for (\w+ \w+) mentioned", p.question).group(1)
    assert dict(keys)[asked] == p.answers[0]
    # every key is askable, the asked one first
    assert [q for q, _ in p.questions][0] == p.question and len(p.questions) == 5
    assert {a[0] for _, a in p.questions} == {v for _, v in keys}


def test_variable_tracking_chain_resolves_to_the_value():
    p = make_problem("variable_tracking", seed=1, length=4096, hops=3, chains=3)
    value = re.search(r"assigned the value (\d+ \d+)", p.question).group(1)
    binds = dict(re.findall(r"var (\w+) = (var \w+|\d+ \d+) \.", p.context))
    def resolve(name):  # follow references back to a number
        v = binds[name]
        return resolve(v[4:]) if v.startswith("var ") else v
    found = {n for n in binds if resolve(n) == value}
    assert found == set(p.answers) and len(found) == 4
    assert score(p, " ".join(sorted(found)[:2])) == 0.5
    assert score(p, " ".join(a + "9" for a in p.answers)) == 0.0  # whole words: v1 is not in v19


def test_text_is_in_the_vocabulary():
    vocab = set(vocabulary())
    for task in TASKS:
        p = make_problem(task, seed=5, length=512)
        assert set(p.prompt.split()) | {w for a in p.answers for w in a.split()} <= vocab


def test_token_counter_and_errors():
    p = make_problem("niah_single", seed=0, length=2000, count_tokens=lambda s: len(s))  # characters
    assert 1800 <= len(p.context) <= 2100
    with pytest.raises(ValueError, match="unknown RULER task"):
        make_problem("qa", 0)
    with pytest.raises(ValueError, match="too short"):
        make_problem("niah_single", 0, length=10)
    with pytest.raises(ValueError, match="at most 10 keys"):
        make_problem("niah_multikey", 0, n_keys=11)
