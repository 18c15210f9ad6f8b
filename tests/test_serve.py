"""`tessera serve`: a real server on 127.0.0.1 and the real `openai` client. Completions and chat, streamed
or not; 64 concurrent mixed requests equal to each served alone; every bad request; a client that
disconnects has its KV freed."""

import json
import os
import re
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from tessera.config import SamplingParams
from tessera.engine import LLM
from tessera.serve.app import build_app
from tessera.serve.runner import ServerThread
from tessera.tasks.reasoning import EVAL_SEED_BASE, make_problem

MODEL = "tiny-reasoner"


@pytest.fixture(scope="module")
def llm():
    return LLM.load()


@pytest.fixture(scope="module")
def server(llm):
    with ServerThread(build_app(llm, MODEL)) as url:
        yield url


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server + "/v1", api_key="unused", max_retries=0, timeout=120)


def prompt(i: int, difficulty: int = 3) -> str:
    return make_problem(EVAL_SEED_BASE + i, difficulty).prompt


def metric(url: str, name: str, labels: str = "") -> float:
    text = httpx.get(url + "/metrics").text
    m = re.search(rf"^{name}{re.escape(labels)} (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def test_completion_equals_the_python_api(client, llm):
    p = prompt(1)
    r = client.completions.create(model=MODEL, prompt=p, max_tokens=16, temperature=0)
    ref = llm.generate(p, SamplingParams(max_tokens=16)).completions[0]
    assert r.choices[0].text == ref.text and r.choices[0].finish_reason == "length"
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (len(ref.prompt_ids), 16)
    stream = client.completions.create(model=MODEL, prompt=p, max_tokens=16, temperature=0, stream=True)
    chunks = list(stream)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == ref.text
    assert chunks[-1].usage.completion_tokens == 16 and chunks[-2].choices[0].finish_reason == "length"


def test_chat_equals_the_python_api(client, llm):
    msgs = [{"role": "user", "content": prompt(2)}]
    r = client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=12, temperature=0)
    ref = llm.chat(msgs, SamplingParams(max_tokens=12)).completions[0]
    assert r.choices[0].message.content == ref.text and r.choices[0].message.role == "assistant"
    assert r.usage.total_tokens == len(ref.prompt_ids) + len(ref.token_ids)
    chunks = list(client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=12, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == ref.text
    assert chunks[-1].usage.completion_tokens == len(ref.token_ids)


def test_stop_seed_and_kv_settings(client, llm):
    p = prompt(3)
    full = llm.generate(p, SamplingParams(max_tokens=30)).completions[0].text
    stop = full.split()[5]
    r = client.completions.create(model=MODEL, prompt=p, max_tokens=30, temperature=0, stop=[stop])
    assert r.choices[0].finish_reason == "stop" and r.choices[0].text == full[: full.find(stop)]
    kw = dict(model=MODEL, prompt=p, max_tokens=20, temperature=0.8, top_p=0.9, seed=11)
    assert client.completions.create(**kw).choices[0].text == client.completions.create(**kw).choices[0].text
    rkv = dict(press="rkv", budget=24, buffer=8, window=4)
    r = client.completions.create(model=MODEL, prompt=p, max_tokens=40, temperature=0, extra_body=rkv)
    ref = llm.generate(p, SamplingParams(max_tokens=40), press=__import__("tessera").make_press("rkv", budget=24,
                       buffer=8, window=4)).completions[0]
    assert r.choices[0].text == ref.text


def test_models_health_and_metrics(server, client):
    assert [m.id for m in client.models.list().data] == [MODEL]
    assert httpx.get(server + "/health").json() == {"status": "ok"}
    text = httpx.get(server + "/metrics").text
    for name in ("tessera_requests_total", "tessera_prompt_tokens_total", "tessera_generation_tokens_total",
                 "tessera_time_to_first_token_seconds_bucket", "tessera_time_per_output_token_seconds_bucket",
                 "tessera_requests_running", "tessera_requests_waiting", "tessera_kv_cache_bytes"):
        assert name in text, name


def _mixed(i: int) -> dict:
    """Request i of the concurrent mix: completions or chat, streamed or not, lengths, presses, sampling."""
    kw = dict(model=MODEL, max_tokens=1 + (i * 7) % 24, temperature=0)
    if i % 3 == 0:
        kw["extra_body"] = dict(press="rkv", budget=24, buffer=8, window=4)
    if i % 8 == 5:
        kw.update(temperature=0.7, seed=i)  # sampled, seeded: the same draw whatever the batch
    if i % 2:
        kw["messages"] = [{"role": "user", "content": prompt(100 + i, 2 + i % 5)}]
    else:
        kw["prompt"] = prompt(100 + i, 2 + i % 5)
    kw["stream"] = i % 4 < 2
    return kw


def _ask(client, kw) -> tuple[str, str, int]:
    call = client.chat.completions.create if "messages" in kw else client.completions.create
    if not kw["stream"]:
        r = call(**kw)
        c = r.choices[0]
        return (c.message.content if "messages" in kw else c.text), c.finish_reason, r.usage.completion_tokens
    text, finish, used = "", None, None
    for ch in call(**kw, stream_options={"include_usage": True}):
        if ch.choices:
            d = ch.choices[0]
            text += (d.delta.content or "") if "messages" in kw else d.text
            finish = d.finish_reason or finish
        if ch.usage:
            used = ch.usage.completion_tokens
    return text, finish, used


def test_64_concurrent_mixed_requests_equal_each_served_alone(server, client):
    before = metric(server, "tessera_generation_tokens_total")
    n_before = sum(metric(server, "tessera_requests_total", f'{{outcome="{o}"}}') for o in ("stop", "length"))
    reqs = [_mixed(i) for i in range(64)]
    with ThreadPoolExecutor(64) as pool:
        together = list(pool.map(lambda kw: _ask(client, kw), reqs))
    alone = [_ask(client, kw) for kw in reqs]
    assert together == alone
    assert all(t[2] >= 1 for t in together)
    served = sum(metric(server, "tessera_requests_total", f'{{outcome="{o}"}}') for o in ("stop", "length"))
    assert served - n_before == 128
    assert metric(server, "tessera_generation_tokens_total") - before == 2 * sum(t[2] for t in together)


@pytest.mark.parametrize("body, status, param", [
    ('{"model": "tiny-reasoner", "prompt": ', 400, None),
    ('[1, 2]', 400, None),
    ('{"model": "gpt-9", "prompt": "problem :"}', 404, "model"),
    ('{"model": "tiny-reasoner", "prompt": "problem :", "max_tokens": -1}', 400, "max_tokens"),
    ('{"model": "tiny-reasoner", "prompt": "problem :", "max_tokens": 65536}', 400, "max_tokens"),
    ('{"model": "tiny-reasoner", "prompt": "problem :", "max_tokens": 2.5}', 400, "max_tokens"),
    ('{"model": "tiny-reasoner", "prompt": "problem :", "press": "nope"}', 400, "press"),
    ('{"model": "tiny-reasoner", "prompt": "problem :", "press": "rkv", "budget": 2}', 400, "press"),
    ('{"model": "tiny-reasoner", "prompt": "problem :", "kv": "nope"}', 400, None),
    ('{"model": "tiny-reasoner", "prompt": "problem :", "n": 2}', 400, "n"),
    ('{"model": "tiny-reasoner", "prompt": "problem :", "temperature": "hot"}', 400, "temperature"),
    ('{"model": "tiny-reasoner", "prompt": "problem :", "top_p": 0}', 400, "top_p"),
    ('{"model": "tiny-reasoner"}', 400, "prompt"),
    ('{"model": "tiny-reasoner", "prompt": ""}', 400, "prompt"),
    ('{"model": "tiny-reasoner", "prompt": [1, 99999]}', 400, "prompt"),
])
def test_bad_requests_get_openai_errors_and_the_server_keeps_serving(server, client, body, status, param):
    r = httpx.post(server + "/v1/completions", content=body, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["message"] and err["type"] == "invalid_request_error" and err["param"] == param
    assert client.completions.create(model=MODEL, prompt="problem :", max_tokens=2).usage.completion_tokens >= 1


def test_too_long_prompts_and_bad_messages(client):
    long = " ".join(["1"] * 65_536)
    with pytest.raises(openai.BadRequestError, match="maximum"):
        client.completions.create(model=MODEL, prompt=long, max_tokens=2)
    with pytest.raises(openai.BadRequestError, match="maximum"):
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": long}], max_tokens=2)
    with pytest.raises(openai.BadRequestError, match="role"):
        client.chat.completions.create(model=MODEL, messages=[{"role": "wizard", "content": "problem"}])
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="other", messages=[{"role": "user", "content": "problem"}])


def _wait_for(cond, timeout_s: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("stream", [True, False])
def test_a_disconnecting_client_has_its_request_aborted_and_kv_freed(server, stream):
    assert _wait_for(lambda: metric(server, "tessera_kv_cache_bytes") == 0)
    aborted = metric(server, "tessera_requests_total", '{outcome="aborted"}')
    body = {"model": MODEL, "prompt": prompt(7), "max_tokens": 5000, "ignore_eos": True, "temperature": 0,
            "stream": stream}
    if stream:
        with httpx.stream("POST", server + "/v1/completions", json=body, timeout=60) as r:
            lines = r.iter_lines()
            got = [next(lines) for _ in range(6)]
            assert any(g.startswith("data: ") for g in got)
            assert metric(server, "tessera_kv_cache_bytes") > 0
    else:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(server + "/v1/completions", json=body, timeout=1.0)
    assert _wait_for(lambda: metric(server, "tessera_kv_cache_bytes") == 0
                     and metric(server, "tessera_requests_running") == 0)
    assert metric(server, "tessera_requests_total", '{outcome="aborted"}') == aborted + 1


def test_the_serve_command_starts_and_answers(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, TESSERA_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "tessera", "serve", "--port", str(port), "--log-level", "warning"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}"

        def up():
            try:
                return httpx.get(url + "/health", timeout=1).status_code == 200
            except httpx.TransportError:
                return proc.poll() is None and False
        assert _wait_for(up, 60), proc.stdout.read() if proc.poll() is not None else "no answer"
        c = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60)
        r = c.completions.create(model=MODEL, prompt=prompt(1), max_tokens=4, temperature=0)
        assert r.usage.completion_tokens == 4 and json.loads(r.model_dump_json())["model"] == MODEL
    finally:
        proc.terminate()
        proc.wait(10)
