"""The OpenAI-compatible HTTP app (FastAPI on uvicorn): chat completions, models, tasks.

Why FastAPI + uvicorn: the maintained ASGI stack most Python serving uses (vLLM's own
OpenAI server among them); SSE streaming, graceful shutdown on SIGTERM (in-flight requests
finish, new ones are refused) and client-disconnect cancellation come with it.

Generation never runs on the event loop. A request is checked (auth, body size, fields,
budget, context length, queue room), turned into one :class:`~specialize.infer.types.Request`
and handed to its variant's backend: on the local engine it joins the running batch at once
(``HFBackend.submit``), so concurrent clients decode together; a GGUF variant answers through
its llama.cpp child. Waiting happens in a thread pool sized to the pending-request bound, so
the loop stays free for new connections, health checks and 429s.

Every error is the OpenAI error shape with a 4xx for bad input (the official client raises
its typed exceptions: ``AuthenticationError``, ``NotFoundError``, ``BadRequestError``,
``RateLimitError``); a 5xx means the server failed, never that the input was bad.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI
from fastapi import Request as HttpRequest
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError

from specialize.data.tasks import Task
from specialize.errors import SpecializeError
from specialize.infer.types import Constraint, Request, Result, Sampling, checked
from specialize.serve.metrics import Metrics
from specialize.serve.registry import Registry, Variant
from specialize.serve.settings import ServeSettings
from specialize.serve.task_api import (
    TaskFailed,
    TaskInputs,
    as_json,
    attempts,
    task_request,
    task_value,
)
from specialize.serve.wire import ChatRequest, TaskCall, error_body

log = logging.getLogger("specialize")


class ApiError(Exception):
    """An answer in the OpenAI error shape with its HTTP status."""

    def __init__(
        self,
        status: int,
        message: str,
        kind: str = "invalid_request_error",
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind
        self.param, self.code, self.headers = param, code, headers or {}


@dataclass
class _State:
    reg: Registry
    settings: ServeSettings
    metrics: Metrics = field(default_factory=Metrics)
    pending: int = 0
    created: int = field(default_factory=lambda: int(time.time()))
    pool: ThreadPoolExecutor | None = None

    def admit(self) -> None:
        """Take a pending slot or answer 429 (the caller releases it with :meth:`release`)."""
        if self.pending >= self.settings.max_pending:
            self.metrics.rejected.labels("queue_full").inc()
            raise ApiError(
                429,
                f"the server has {self.pending} requests pending; retry shortly",
                "rate_limit_error",
                code="queue_full",
                headers={"Retry-After": str(self.settings.retry_after_s)},
            )
        self.pending += 1
        self.metrics.pending.set(self.pending)

    def release(self) -> None:
        self.pending -= 1
        self.metrics.pending.set(self.pending)

    async def wait(self, fn: Any, *args: Any) -> Any:
        """Run a blocking wait in the pool, off the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)


# --------------------------------------------------------------------------- checking
def check_key(state: _State, request: HttpRequest) -> None:
    """Bearer-token auth when the server has a key (compared in constant time)."""
    key = state.settings.api_key
    if not key:
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.encode(), key.encode()):
        state.metrics.rejected.labels("auth").inc()
        raise ApiError(401, "invalid or missing API key", code="invalid_api_key")


async def read_body(state: _State, request: HttpRequest) -> Any:
    """The JSON body, refused with 413 past the size bound before it is all read."""
    limit = state.settings.max_body_bytes
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        state.metrics.rejected.labels("body_size").inc()
        raise ApiError(413, f"the request body is over {limit} bytes", code="body_too_large")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            state.metrics.rejected.labels("body_size").inc()
            raise ApiError(413, f"the request body is over {limit} bytes", code="body_too_large")
    try:
        return json.loads(bytes(body))
    except (ValueError, RecursionError):
        raise ApiError(400, "the request body is not valid JSON", code="invalid_json") from None


def parse(model: Any, data: Any) -> Any:
    """A wire model from JSON, or a 400 naming the first bad field."""
    try:
        return model.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or None
        raise ApiError(400, f"{where or 'body'}: {first.get('msg')}", param=where) from None


def variant_of(state: _State, model: str) -> Variant:
    v = state.reg.get(model)
    if v is None:
        have = ", ".join(sorted(state.reg.variants))
        raise ApiError(
            404, f"model '{model}' not found (served: {have})", param="model",
            code="model_not_found",
        )  # fmt: skip
    return v


def budget(state: _State, asked: int | None, param: str = "max_tokens") -> int:
    n = asked or state.settings.default_max_tokens
    if n > state.settings.max_tokens:
        raise ApiError(400, f"{param} {n} is over this server's {state.settings.max_tokens}",
                       param=param)  # fmt: skip
    return n


def constraint_of(body: ChatRequest) -> Constraint | None:
    """``response_format`` as a decoding constraint, compiled now (a bad schema is a 400)."""
    rf = body.response_format
    if rf is None or rf.type == "text":
        return None
    if rf.type == "json_object":
        c = Constraint.json_schema({"type": "object"}, name="json_object")
    else:
        if rf.json_schema is None or not rf.json_schema.schema_:
            raise ApiError(400, "response_format json_schema needs a schema",
                           param="response_format.json_schema")  # fmt: skip
        c = Constraint.json_schema(rf.json_schema.schema_, name=rf.json_schema.name)
    from specialize.infer.constraints import check_constraint

    try:
        check_constraint(c)
    except SpecializeError as err:
        raise ApiError(400, err.message, param="response_format") from None
    return c


def messages_of(state: _State, body: ChatRequest) -> list[dict[str, str]]:
    if len(body.messages) > state.settings.max_messages:
        raise ApiError(400, f"{len(body.messages)} messages; this server takes at most "
                       f"{state.settings.max_messages}", param="messages")  # fmt: skip
    out = []
    for i, m in enumerate(body.messages):
        if isinstance(m.content, list):
            if any(p.type != "text" for p in m.content):
                raise ApiError(400, "only text content is supported by this model",
                               param=f"messages.{i}.content")  # fmt: skip
            text = "".join(p.text or "" for p in m.content)
        else:
            text = m.content or ""
        out.append({"role": "system" if m.role == "developer" else m.role, "content": text})
    return out


def chat_request(state: _State, v: Variant, body: ChatRequest) -> tuple[Request, int]:
    """The inference request of a chat body, and its prompt length in tokens (0 if unknown)."""
    if body.n != 1:
        raise ApiError(400, "n > 1 is not supported", param="n")
    if body.tools:
        raise ApiError(400, "tools are not supported", param="tools")
    max_new = budget(state, body.max_completion_tokens or body.max_tokens)
    stops = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    if len(stops) > 4:
        raise ApiError(400, "at most 4 stop sequences", param="stop")
    temperature = 1.0 if body.temperature is None else body.temperature
    sampling = Sampling(temperature, body.top_p or 1.0, body.seed)
    msgs = messages_of(state, body)
    common: dict[str, Any] = {
        "max_new_tokens": max_new, "sampling": sampling, "stop": tuple(stops),
        "constraint": constraint_of(body), "adapter": v.adapter,
    }  # fmt: skip
    if v.tokenizer is None:
        return Request(messages=msgs, **common), 0  # type: ignore[arg-type]
    from specialize.models.chat import render_prompt

    fmt = getattr(v.backend, "fmt", "chatml")
    try:
        ids = render_prompt(msgs, v.tokenizer, fmt)  # type: ignore[arg-type]
    except (SpecializeError, ValueError, KeyError) as err:
        raise ApiError(400, f"cannot render these messages: {err}", param="messages") from None
    if len(ids) + max_new > v.context:
        raise ApiError(
            400,
            f"prompt ({len(ids)} tokens) plus max_tokens ({max_new}) is over the model's "
            f"context of {v.context} tokens",
            param="messages", code="context_length_exceeded",
        )  # fmt: skip
    return Request(prompt_ids=ids, **common), len(ids)


# --------------------------------------------------------------------------- answering
async def answer(state: _State, v: Variant, req: Request) -> Result:
    """One complete answer (checked against its constraint), or 504 past the timeout."""
    timeout = state.settings.timeout_s
    submit = getattr(v.backend, "submit", None)
    if submit is not None:
        ticket = submit(req, stream=False)
        try:
            res = await asyncio.wait_for(state.wait(ticket.result), timeout)
        except (TimeoutError, asyncio.CancelledError) as err:
            ticket.cancel()
            if isinstance(err, asyncio.CancelledError):
                raise
            raise ApiError(504, f"no answer within {timeout:g}s", "timeout_error") from None
    else:
        work = state.wait(lambda: v.backend.generate([req], progress=False))
        try:
            res = (await asyncio.wait_for(work, timeout))[0]
        except TimeoutError:
            raise ApiError(504, f"no answer within {timeout:g}s", "timeout_error") from None
    res = checked(res, req)
    if res.error is not None:
        if "context" in res.error or "n_ctx" in res.error or "too long" in res.error:
            raise ApiError(400, res.error, param="messages", code="context_length_exceeded")
        raise ApiError(500, f"the model failed: {res.error}", "server_error")
    return res


def completion(model: str, res: Result, prompt_tokens: int) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": res.text},
            "finish_reason": "length" if res.finish_reason == "length" else "stop",
            "logprobs": None,
        }],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": res.new_tokens,
            "total_tokens": prompt_tokens + res.new_tokens,
        },
    }  # fmt: skip


def _chunk(cid: str, model: str, delta: dict[str, str], finish: str | None) -> str:
    body = {
        "id": cid, "object": "chat.completion.chunk", "created": int(time.time()),
        "model": model, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }  # fmt: skip
    return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"


async def stream(state: _State, v: Variant, req: Request, started: float) -> AsyncIterator[str]:
    """SSE chunks of one answer, then ``[DONE]``; a client that goes away cancels its row in
    the running batch (the pending slot is released by :class:`_Stream`)."""
    cid, model = f"chatcmpl-{uuid.uuid4().hex}", v.id
    ticket = None
    try:
        yield _chunk(cid, model, {"role": "assistant", "content": ""}, None)
        submit = getattr(v.backend, "submit", None)
        if submit is None:  # a GGUF variant: the whole answer as one piece
            res = await answer(state, v, req)
            yield _chunk(cid, model, {"content": res.text}, None)
        else:
            ticket = submit(req, stream=True)
            pieces = ticket.stream()
            deadline = started + state.settings.timeout_s
            while (piece := await asyncio.wait_for(
                    state.wait(next, pieces, None), max(0.0, deadline - time.monotonic()))
                   ) is not None:  # fmt: skip
                yield _chunk(cid, model, {"content": piece}, None)
            res = ticket.result()
        finish = "length" if res.finish_reason == "length" else "stop"
        if res.error is not None:
            yield f"data: {json.dumps(error_body(res.error, 'server_error'))}\n\n"
        else:
            yield _chunk(cid, model, {}, finish)
            state.metrics.completion_tokens.labels(model).inc(res.new_tokens)
        yield "data: [DONE]\n\n"
    except TimeoutError:
        msg = f"no answer within {state.settings.timeout_s:g}s"
        yield f"data: {json.dumps(error_body(msg, 'timeout_error'))}\n\n"
        yield "data: [DONE]\n\n"
    except ApiError as err:
        yield f"data: {json.dumps(error_body(err.message, err.kind, err.param, err.code))}\n\n"
        yield "data: [DONE]\n\n"
    finally:
        if ticket is not None and not ticket.done():
            ticket.cancel()
        state.metrics.latency.labels(model, "chat").observe(time.monotonic() - started)


class _Stream(StreamingResponse):
    """A streaming response that releases its pending slot however it ends: finished,
    cancelled by a client that went away, or never started."""

    def __init__(self, content: AsyncIterator[str], release: Any) -> None:
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        super().__init__(content, media_type="text/event-stream", headers=headers)
        self._release = release

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._release()


# ------------------------------------------------------------------------------ routes
async def chat_completions(state: _State, request: HttpRequest) -> Response:
    check_key(state, request)
    body: ChatRequest = parse(ChatRequest, await read_body(state, request))
    v = variant_of(state, body.model)
    req, prompt_tokens = chat_request(state, v, body)
    state.admit()
    started = time.monotonic()
    state.metrics.prompt_tokens.labels(v.id).inc(prompt_tokens)
    if body.stream:
        released = []

        def release() -> None:
            if not released:
                released.append(True)
                state.release()

        return _Stream(stream(state, v, req, started), release)
    try:
        res = await answer(state, v, req)
    finally:
        state.release()
        state.metrics.latency.labels(v.id, "chat").observe(time.monotonic() - started)
    state.metrics.completion_tokens.labels(v.id).inc(res.new_tokens)
    if not prompt_tokens and res.prompt_tokens:  # a GGUF variant counts them in llama.cpp
        prompt_tokens = res.prompt_tokens
        state.metrics.prompt_tokens.labels(v.id).inc(prompt_tokens)
    return JSONResponse(completion(v.id, res, prompt_tokens))


def task_of(state: _State, name: str, model: str | None) -> tuple[Variant, Task]:
    """The variant a task call goes to (the only tuned model when none is named) and the
    task from that run's catalog."""
    if model is None:
        tuned = [v for v in state.reg.variants.values() if v.kind == "tuned"]
        if len(tuned) != 1:
            raise ApiError(400, "several runs are served: name one in 'model'", param="model")
        v = tuned[0]
    else:
        v = variant_of(state, model)
    if v.catalog is None or name not in v.catalog:
        have = ", ".join(v.catalog.names) if v.catalog is not None else "none"
        raise ApiError(404, f"task '{name}' not found for {v.id} (tasks: {have})",
                       param="name", code="task_not_found")  # fmt: skip
    return v, v.catalog[name]


async def run_task(state: _State, name: str, request: HttpRequest) -> Response:
    check_key(state, request)
    call: TaskCall = parse(TaskCall, await read_body(state, request))
    v, task = task_of(state, name, call.model)
    inputs: TaskInputs = parse(TaskInputs, call.input)
    try:
        req = task_request(task, inputs, max_tokens=budget(state, call.max_tokens),
                           adapter=v.adapter)  # fmt: skip
    except SpecializeError as err:
        where = f"input.{err.field}" if err.field else "input"
        raise ApiError(400, err.message, param=where) from None
    state.admit()
    started = time.monotonic()
    try:
        for attempt in attempts(req, call.retries):  # as generate_checked retries in process
            res = await answer(state, v, attempt)
            state.metrics.completion_tokens.labels(v.id).inc(res.new_tokens)
            if res.invalid is None:
                break
    finally:
        state.release()
        state.metrics.latency.labels(v.id, "task").observe(time.monotonic() - started)
    try:
        value = task_value(task, res)
    except TaskFailed as err:
        raise ApiError(422, err.message, code="invalid_output") from None
    return JSONResponse({"task": name, "model": v.id, "value": as_json(value), "text": res.text})


def build_app(reg: Registry, settings: ServeSettings) -> FastAPI:
    """The app over ``reg``'s variants; closing the app's lifespan closes the registry."""
    state = _State(reg, settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state.pool = ThreadPoolExecutor(settings.max_pending + 4, thread_name_prefix="serve")
        try:
            yield
        finally:
            state.pool.shutdown(wait=False, cancel_futures=True)
            reg.close()

    app = FastAPI(title="specialize", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.serve = state

    @app.exception_handler(ApiError)
    async def api_error(request: HttpRequest, err: ApiError) -> JSONResponse:
        body = error_body(err.message, err.kind, err.param, err.code)
        return JSONResponse(body, status_code=err.status, headers=err.headers)

    @app.exception_handler(Exception)
    async def unexpected(request: HttpRequest, err: Exception) -> JSONResponse:
        log.exception("serve: unexpected error on %s", request.url.path)
        body = error_body(f"internal error: {type(err).__name__}", "server_error")
        return JSONResponse(body, status_code=500)

    @app.middleware("http")
    async def count(request: HttpRequest, call_next: Any) -> Response:
        response = await call_next(request)
        route = request.scope.get("route")
        path = getattr(route, "path", "unknown")
        state.metrics.requests.labels(path, str(response.status_code)).inc()
        return response

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "models": len(reg.variants), "pending": state.pending}

    @app.get("/metrics")
    async def metrics(request: HttpRequest) -> Response:
        check_key(state, request)
        return Response(state.metrics.render(), media_type=state.metrics.content_type)

    @app.get("/v1/models")
    async def models(request: HttpRequest) -> dict[str, Any]:
        check_key(state, request)
        data = [
            {"id": v.id, "object": "model", "created": state.created, "owned_by": "specialize"}
            for v in reg.variants.values()
        ]
        return {"object": "list", "data": data}

    @app.post("/v1/chat/completions")
    async def chat(request: HttpRequest) -> Response:
        return await chat_completions(state, request)

    @app.get("/v1/tasks")
    async def tasks(request: HttpRequest) -> dict[str, Any]:
        check_key(state, request)
        out = {v.id: v.catalog.to_json() for v in reg.variants.values() if v.catalog is not None}
        return {"object": "list", "data": out}

    @app.post("/v1/tasks/{name}")
    async def task(name: str, request: HttpRequest) -> Response:
        return await run_task(state, name, request)

    return app


def run_server(reg: Registry, settings: ServeSettings) -> None:
    """Serve until SIGINT/SIGTERM; in-flight requests finish (up to the request timeout)."""
    import uvicorn

    config = uvicorn.Config(
        build_app(reg, settings),
        host=settings.host,
        port=settings.port,
        log_level="warning",
        timeout_graceful_shutdown=int(settings.timeout_s),
    )  # no limit_concurrency: past it uvicorn answers 503; the pending bound answers 429
    uvicorn.Server(config).run()
