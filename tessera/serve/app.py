"""`tessera serve`: an OpenAI-compatible HTTP API over the step engine (FastAPI on uvicorn).

Routes: POST /v1/completions, POST /v1/chat/completions (streaming by server-sent events when
`"stream": true`), GET /v1/models, GET /health, GET /metrics (Prometheus). Every answer carries `usage`
(a stream ends with a chunk holding it, as OpenAI's `stream_options.include_usage` does). Bad input
gets OpenAI's error body with a 4xx status and the server keeps serving; a client that disconnects has
its request aborted, which frees its KV at once.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import OrderedDict
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError

from tessera.engine.engine import LLM
from tessera.kv.presses import make_press
from tessera.serve.async_engine import AsyncEngine, EngineDead
from tessera.serve.metrics import Metrics
from tessera.serve.protocol import APIError, ChatCompletionRequest, CompletionRequest

FINISH = {"eos": "stop", "stop": "stop", "length": "length"}


class _Presses:
    """One press object per distinct setting, so requests with equal settings can share a cohort."""

    def __init__(self, size: int = 64):
        self.size, self.cache = size, OrderedDict()

    def get(self, name: str, kw: dict):
        if name in ("none", "full"):
            kw = {}  # full KV: nothing to configure
        key = (name, repr(sorted(kw.items())))
        if key not in self.cache:
            try:
                self.cache[key] = make_press(name, **kw)
            except (TypeError, ValueError) as e:
                raise APIError(400, f"press {name!r}: {e}", "press") from e
            if len(self.cache) > self.size:
                self.cache.popitem(last=False)
        self.cache.move_to_end(key)
        return self.cache[key]


def build_app(llm: LLM, model_name: str, kv_cap_bytes: int | None = None, max_running: int | None = None,
              default_max_tokens: int = 256) -> FastAPI:
    metrics = Metrics()
    engine = llm.engine(kv_cap_bytes, max_running)
    aengine = AsyncEngine(engine, metrics)
    presses = _Presses()
    max_pos = llm.config.max_position_embeddings

    @asynccontextmanager
    async def lifespan(app):
        aengine.start()
        yield
        aengine.stop()

    app = FastAPI(title="tessera", lifespan=lifespan)
    app.state.engine, app.state.metrics = aengine, metrics

    @app.exception_handler(APIError)
    async def _api_error(request, e: APIError):
        metrics.refused(e.status)
        return JSONResponse(e.body(), status_code=e.status)

    async def parse(request: Request, model):
        try:
            body = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise APIError(400, f"the body is not valid JSON: {e}") from e
        if not isinstance(body, dict):
            raise APIError(400, "the body must be a JSON object")
        try:
            req = model.model_validate(body)
        except ValidationError as e:
            err = e.errors()[0]
            param = ".".join(str(x) for x in err["loc"])
            raise APIError(400, f"{param}: {err['msg']}", param) from e
        if req.model != model_name:
            raise APIError(404, f"the model {req.model!r} does not exist; this server serves {model_name!r}",
                           "model", "model_not_found")
        return req

    def make(req, ids: list[int], kind: str):
        if req.max_tokens is not None and len(ids) + req.max_tokens > max_pos:
            raise APIError(400, f"this model's maximum context length is {max_pos} tokens; the prompt has "
                                f"{len(ids)} and max_tokens is {req.max_tokens}", "max_tokens")
        sp = req.sampling(min(default_max_tokens, max_pos - len(ids)))
        press = presses.get(req.press, req.press_kwargs())
        rid = f"{kind}-{uuid.uuid4().hex}"
        try:
            return engine.make_request(ids, sp, press, req.kv, req.kv_options, request_id=rid)
        except (TypeError, ValueError) as e:
            raise APIError(400, str(e)) from e

    def submit(r):
        try:
            return aengine.submit(r)
        except EngineDead as e:
            raise APIError(503, str(e), type="server_error") from e

    async def next_output(q: asyncio.Queue):
        o = await q.get()
        if isinstance(o, (TypeError, ValueError)):
            raise APIError(400, str(o))
        if isinstance(o, BaseException):
            raise APIError(500, f"the engine failed: {o!r}", type="server_error")
        return o

    async def client_gone(request: Request) -> None:
        """Returns when the client disconnects (the body has been read: the next message says so)."""
        while (await request.receive())["type"] != "http.disconnect":
            pass

    def usage(c) -> dict:
        p, g = len(c.prompt_ids), len(c.token_ids)
        return {"prompt_tokens": p, "completion_tokens": g, "total_tokens": p + g}

    async def answer(request: Request, req, r, kind: str):
        q = submit(r)
        created = int(time.time())
        obj = "text_completion" if kind == "cmpl" else "chat.completion"

        def choice(text: str, finish: str | None, first: bool = False) -> dict:
            if kind == "cmpl":
                return {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
            if req.stream:
                delta = {"role": "assistant", "content": text} if first else {"content": text}
                return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            return {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                    "finish_reason": finish}

        def chunk(choices, **extra) -> str:
            body = {"id": r.id, "object": obj + (".chunk" if kind == "chat" else ""), "created": created,
                    "model": model_name, "choices": choices, **extra}
            return f"data: {json.dumps(body)}\n\n"

        if not req.stream:
            async def result():
                while not (o := await next_output(q)).finished:
                    pass
                c = o.completion
                return {"id": r.id, "object": obj, "created": created, "model": model_name,
                        "choices": [choice(c.text, FINISH[c.finish_reason])], "usage": usage(c)}

            work, gone = asyncio.ensure_future(result()), asyncio.ensure_future(client_gone(request))
            try:
                await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                gone.cancel()
                if not work.done():  # the client went away (or the server stops): free the request's KV now
                    work.cancel()
                    aengine.abort(r.id)
            if not work.done() or work.cancelled():
                return Response(status_code=499)  # nobody is listening
            return work.result()

        async def events():
            done, first = False, True
            try:
                while not done:
                    o = await next_output(q)
                    done = o.finished
                    if o.text or done or first:
                        yield chunk([choice(o.text, FINISH[o.finish_reason] if done else None, first)])
                        first = False
                yield chunk([], usage=usage(o.completion))
                yield "data: [DONE]\n\n"
            finally:
                if not done:  # the client went away (or the server stops): free the request's KV now
                    aengine.abort(r.id)

        return StreamingResponse(events(), media_type="text/event-stream")

    @app.post("/v1/completions")
    async def completions(request: Request):
        req = await parse(request, CompletionRequest)
        if req.logprobs is not None or req.echo:
            raise APIError(400, "logprobs and echo are not supported by this server", "logprobs")
        prompt = req.prompt
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], (str, list)):
            if len(prompt) != 1:
                raise APIError(400, "one prompt per request", "prompt")
            prompt = prompt[0]
        try:
            (ids,) = llm.encode([prompt if isinstance(prompt, str) else list(prompt)])
        except (TypeError, ValueError) as e:
            raise APIError(400, str(e).replace("prompt 0", "the prompt"), "prompt") from e
        return await answer(request, req, make(req, ids, "cmpl"), "cmpl")

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        req = await parse(request, ChatCompletionRequest)
        if req.logprobs:
            raise APIError(400, "logprobs are not supported by this server", "logprobs")
        messages = [{"role": m.role, "content": m.text()} for m in req.messages]
        try:
            ids = llm.encode_chat(messages)
        except (TypeError, ValueError) as e:
            raise APIError(400, str(e).replace("prompt 0", "the prompt"), "messages") from e
        return await answer(request, req, make(req, ids, "chat"), "chat")

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": 0,
                                            "owned_by": "tessera", "max_model_len": max_pos}]}

    @app.get("/health")
    async def health():
        if aengine.error is not None:
            return JSONResponse({"status": "error", "error": repr(aengine.error)}, status_code=503)
        return {"status": "ok"}

    @app.get("/metrics")
    async def prometheus():
        return Response(metrics.render(), media_type="text/plain; version=0.0.4")

    return app
