from tessera.config import SamplingParams
from tessera.engine.stopping import StopChecker

WORDS = ["a", "b", "answer", ":", "7", "x", "y"]


def decode(ids):
    return " ".join(WORDS[i] for i in ids)


def test_stop_string_cuts_text():
    st = StopChecker(SamplingParams(max_new_tokens=50, stop=(": 7",)), eos_ids=set(), decode=decode)
    pieces = [st.push(t) for t in [0, 1, 2, 3, 4, 5]]
    assert st.done and st.reason == "stop"
    assert pieces[-1] is None  # nothing after the stop
    assert st.text() == "a b answer "
    assert "".join(p for p in pieces if p) == "a b answer : 7"


def test_max_tokens_and_incremental_text():
    st = StopChecker(SamplingParams(max_new_tokens=3), eos_ids={6}, decode=decode)
    assert [st.push(t) for t in [0, 1, 5]] == ["a", " b", " x"]
    assert st.reason == "length" and st.text() == "a b x"
