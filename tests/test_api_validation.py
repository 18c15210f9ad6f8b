"""Bad arguments get clear errors: any input to SamplingParams or LLM.generate either works or raises
TypeError (wrong type) / ValueError (bad value) with one line naming the argument (property tests)."""

import dataclasses

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tessera.config import SamplingParams
from tessera.kv.presses import make_press

FIELDS = [f.name for f in dataclasses.fields(SamplingParams)] + ["max_tokens"]
ANY = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(), st.text(max_size=4),
                st.lists(st.one_of(st.integers(-3, 3), st.text(max_size=2)), max_size=3),
                st.dictionaries(st.text(max_size=2), st.integers(), max_size=2))


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(st.sampled_from(FIELDS), ANY, max_size=4))
def test_sampling_params_work_or_name_the_bad_field(kw):
    try:
        sp = SamplingParams(**kw)
    except (TypeError, ValueError) as e:
        msg = str(e)
        assert "\n" not in msg and any(f in msg for f in kw), msg
        return
    assert isinstance(sp.max_new_tokens, int) and sp.max_new_tokens >= 1 and sp.max_tokens == sp.max_new_tokens
    assert isinstance(sp.temperature, float) and sp.temperature >= 0 and 0 < sp.top_p <= 1
    assert isinstance(sp.top_k, int) and sp.top_k >= 0 and isinstance(sp.n, int) and sp.n >= 1
    assert isinstance(sp.stop, tuple) and all(isinstance(s, str) and s for s in sp.stop)
    assert sp.logprobs is None or 0 <= sp.logprobs <= 20
    assert isinstance(sp.ignore_eos, bool) and hash(sp) is not None


@pytest.mark.parametrize("kw, err, name", [
    (dict(max_new_tokens=2.0), TypeError, "max_new_tokens"), (dict(max_tokens=3.5), TypeError, "max_tokens"),
    (dict(max_tokens=-1), ValueError, "max_tokens"), (dict(top_k=True), TypeError, "top_k"),
    (dict(temperature="hot"), TypeError, "temperature"), (dict(temperature=float("inf")), ValueError, "temperature"),
    (dict(n=0), ValueError, "n"), (dict(logprobs=21), ValueError, "logprobs"), (dict(seed=1.5), TypeError, "seed"),
    (dict(stop=[1]), TypeError, "stop"), (dict(presence_penalty=3), ValueError, "presence_penalty"),
    (dict(repetition_penalty=0), ValueError, "repetition_penalty"), (dict(ignore_eos=1), TypeError, "ignore_eos"),
    (dict(max_tokens=4, max_new_tokens=5), ValueError, "max_tokens"),
])
def test_sampling_params_errors(kw, err, name):
    with pytest.raises(err, match=name):
        SamplingParams(**kw)


@pytest.fixture(scope="module")
def llm(tiny_llm):
    return tiny_llm(24)


def _press(draw_name):
    return {"none": None, "rkv-ok": make_press("rkv", budget=16, buffer=8, window=4),
            "rkv-too-big": make_press("rkv", budget=64, buffer=8, window=4), "name": "rkv",
            "dict": {"name": "rkv"}}[draw_name]


TOKEN_LISTS = st.lists(st.integers(-2, 70), max_size=30)
PROMPTS = st.one_of(TOKEN_LISTS, st.lists(TOKEN_LISTS, max_size=3), st.text(max_size=5), st.none(),
                    st.integers(), st.lists(st.floats(), max_size=3), st.lists(st.booleans(), min_size=1, max_size=3))
VALID_SAMPLING = st.builds(SamplingParams, max_tokens=st.integers(1, 4), n=st.integers(1, 2),
                           temperature=st.sampled_from([0.0, 0.7]), seed=st.just(1), logprobs=st.sampled_from([None, 2]))
SAMPLING = st.one_of(st.none(), VALID_SAMPLING, st.just({"max_tokens": 3}), st.just("greedy"),
                     st.just([SamplingParams(max_tokens=2)]))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(prompts=PROMPTS, sampling=SAMPLING,
       press=st.sampled_from(["none"] * 3 + ["rkv-ok"] * 3 + ["rkv-too-big", "name", "dict"]),
       stream=st.sampled_from([None] * 3 + [print] * 3 + [3]), kv=st.sampled_from(["dense"] * 6 + ["nope", 3]),
       kv_options=st.sampled_from([None] * 3 + [{}] * 3 + [{"x": 1}, [1]]), use_tqdm=st.sampled_from([False] * 6 + [1]))
def test_generate_works_or_raises_a_clear_error(llm, prompts, sampling, press, stream, kv, kv_options, use_tqdm):
    stream = (lambda *a: None) if stream is print else stream
    try:
        out = llm.generate(prompts, sampling, _press(press), stream, kv, kv_options, use_tqdm=use_tqdm)
    except (TypeError, ValueError) as e:
        assert str(e) and "\n" not in str(e)
        return
    n = sampling.n if isinstance(sampling, SamplingParams) else 1
    n_prompts = 1 if prompts and not isinstance(prompts[0], list) else len(prompts)
    assert len(out.completions) == n_prompts * n
    assert all(c is not None and c.finish_reason in ("eos", "length") for c in out.completions)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(prompts=st.lists(st.lists(st.integers(0, 60), min_size=1, max_size=23), min_size=1, max_size=3),
       sampling=VALID_SAMPLING, press=st.sampled_from(["none", "rkv-ok"]))
def test_generate_with_valid_arguments_works(llm, prompts, sampling, press):
    out = llm.generate(prompts, sampling, _press(press))
    assert len(out.completions) == len(prompts) * sampling.n
    for c in out.completions:
        assert 1 <= len(c.token_ids) + (c.finish_reason == "eos") <= sampling.max_tokens
        assert c.logprobs is None if sampling.logprobs is None else len(c.logprobs) == len(c.token_ids)


@pytest.mark.parametrize("kw, err, match", [
    (dict(sampling={"max_tokens": 3}), TypeError, "sampling must be a SamplingParams"),
    (dict(press="rkv"), TypeError, r"press must be a Press object, got str: use make_press\('rkv'\)"),
    (dict(press={"name": "rkv"}), TypeError, "press must be a Press object, got dict"),
    (dict(stream=3), TypeError, "stream must be a callable"),
    (dict(kv=3), TypeError, "kv must be"), (dict(kv="nope"), ValueError, "unknown KV backend"),
    (dict(kv_options=[1]), TypeError, "kv_options"), (dict(prompts=[[1, 2.0]]), TypeError, r"prompts\[0\]"),
    (dict(prompts=b"ab"), TypeError, "prompts must be"), (dict(use_tqdm=1), TypeError, "use_tqdm"),
    (dict(sampling=[SamplingParams()] * 3), ValueError, "3 SamplingParams for 1 prompts"),
])
def test_generate_errors_name_the_argument(llm, kw, err, match):
    args = dict(prompts=[1, 2, 3], sampling=SamplingParams(max_tokens=2)) | kw
    prompts, sampling = args.pop("prompts"), args.pop("sampling")
    with pytest.raises(err, match=match):
        llm.generate(prompts, sampling, **args)
