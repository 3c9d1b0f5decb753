"""The HTTP backend against a fake OpenAI-compatible server: order, retries, constraints."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from specialize.errors import SpecializeError
from specialize.infer.http import OpenAIBackend
from specialize.infer.structured import generate_checked
from specialize.infer.types import Backend, Constraint, Counts, Request, Sampling

# A behaviour gets (request number from 0, request body) and returns (status, JSON payload).
Behaviour = Callable[[int, dict], tuple[int, dict]]


def echo(n: int, body: dict) -> tuple[int, dict]:
    text = "echo: " + body["messages"][-1]["content"]
    return 200, {
        "choices": [{"message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"completion_tokens": len(text.split())},
    }


class FakeServer:
    """Records every request; answers with ``behaviour`` and tracks requests in flight."""

    def __init__(self, behaviour: Behaviour, delay: Callable[[dict], float] | None = None):
        self.behaviour, self.delay = behaviour, delay
        self.bodies: list[dict] = []
        self.lock = threading.Lock()
        self.inflight = self.max_inflight = 0

    def handle(self, body: dict) -> tuple[int, dict]:
        with self.lock:
            n = len(self.bodies)
            self.bodies.append(body)
            self.inflight += 1
            self.max_inflight = max(self.max_inflight, self.inflight)
        try:
            if self.delay:
                time.sleep(self.delay(body))
            return self.behaviour(n, body)
        finally:
            with self.lock:
                self.inflight -= 1


@contextmanager
def serve(behaviour: Behaviour = echo, delay=None) -> Iterator[tuple[str, FakeServer]]:
    fake = FakeServer(behaviour, delay)

    class Handler(BaseHTTPRequestHandler):
        def _send(self, status: int, payload: dict) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            self._send(*fake.handle(body))

        def do_GET(self) -> None:  # noqa: N802
            self._send(200, {"object": "list", "data": [{"id": "fake-model"}]})

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1", fake
    finally:
        server.shutdown()
        server.server_close()


def ask(*questions: str, **kw: Any) -> list[Request]:
    kw.setdefault("max_new_tokens", 4)
    return [Request(messages=[{"role": "user", "content": q}], **kw) for q in questions]


def backend(url: str, **kw: Any) -> OpenAIBackend:
    kw.setdefault("backoff", 0.01)
    kw.setdefault("timeout", 5)
    return OpenAIBackend(url, "fake-model", **kw)


def test_results_keep_callers_order_under_concurrency():
    questions = [f"q{i}" for i in range(12)]
    # Later questions answer faster, so completion order is roughly reversed.
    delay = lambda body: 0.01 * (12 - int(body["messages"][-1]["content"][1:]))  # noqa: E731
    with serve(echo, delay) as (url, fake):
        gens = backend(url, concurrency=4).generate(ask(*questions), progress=False)
    assert [g.text for g in gens] == [f"echo: {q}" for q in questions]
    assert all(g.stopped and g.error is None and g.new_tokens == 2 for g in gens)
    assert fake.max_inflight > 1
    assert isinstance(backend(url), Backend)


def test_request_fields_and_response_format_are_forwarded():
    schema = {"type": "object", "properties": {"x": {"type": "integer"}}}
    with serve() as (url, fake):
        b = backend(url, api_key="k")
        b.generate(
            ask(
                "a",
                max_new_tokens=7,
                sampling=Sampling(0.5, 0.9, 3),
                stop=("\n\n",),
                constraint=Constraint.json_schema(schema, name="thing"),
            ),
            progress=False,
        )
        b.generate(ask("b", max_new_tokens=7), progress=False)
    with_schema, plain = fake.bodies
    assert with_schema["model"] == "fake-model"
    assert with_schema["max_tokens"] == 7 and with_schema["temperature"] == 0.5
    assert with_schema["seed"] == 3 and with_schema["stop"] == ["\n\n"]
    assert with_schema["top_p"] == 0.9
    assert with_schema["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "thing", "schema": schema, "strict": True},
    }
    assert "response_format" not in plain and "seed" not in plain and "stop" not in plain
    assert "top_p" not in plain
    assert plain["temperature"] == 0.0


def test_5xx_is_retried_until_success():
    def flaky(n: int, body: dict) -> tuple[int, dict]:
        return (503, {"error": {"message": "loading"}}) if n < 2 else echo(n, body)

    with serve(flaky) as (url, fake):
        (gen,) = backend(url, retries=4).generate(ask("hi"), progress=False)
    assert gen.text == "echo: hi" and gen.error is None
    assert len(fake.bodies) == 3


def test_400_is_not_retried_and_other_records_survive():
    def picky(n: int, body: dict) -> tuple[int, dict]:
        if body["messages"][-1]["content"] == "bad":
            return 400, {"error": {"message": "prompt too long"}}
        return echo(n, body)

    with serve(picky) as (url, fake):
        gens = backend(url, retries=4).generate(ask("ok1", "bad", "ok2"), progress=False)
    assert [g.text for g in gens] == ["echo: ok1", "", "echo: ok2"]
    assert gens[1].error == "HTTP 400: prompt too long"
    assert [g.error for g in (gens[0], gens[2])] == [None, None]
    assert sum(b["messages"][-1]["content"] == "bad" for b in fake.bodies) == 1


def test_persistent_5xx_becomes_error_records_not_an_exception():
    with serve(lambda n, body: (500, {"error": "boom"})) as (url, fake):
        gens = backend(url, retries=2).generate(ask("a", "b"), progress=False)
    assert all(g.text == "" and "failed after 2 retries (HTTP 500: boom)" in g.error for g in gens)
    assert len(fake.bodies) == 6


def test_timeout_is_retried():
    calls = []

    def first_is_slow(body: dict) -> float:
        calls.append(body)
        return 0.6 if len(calls) == 1 else 0.0

    with serve(echo, first_is_slow) as (url, fake):
        (gen,) = backend(url, timeout=0.3).generate(ask("slow"), progress=False)
    assert gen.text == "echo: slow" and len(fake.bodies) == 2


def free_port() -> int:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return port


def test_unreachable_endpoint_raises_one_line_quickly():
    b = backend(f"http://127.0.0.1:{free_port()}", retries=4, backoff=0.02)
    start = time.perf_counter()
    with pytest.raises(SpecializeError, match="unreachable after 4 retries") as info:
        b.generate(ask(*[f"q{i}" for i in range(20)]), progress=False)
    assert time.perf_counter() - start < 5
    message = str(info.value)
    assert "\n" not in message and message.startswith("endpoint http://127.0.0.1:")
    with pytest.raises(SpecializeError, match="unreachable"):
        b.health_check()


def test_health_check_lists_models():
    with serve() as (url, _):
        assert backend(url).health_check() == ["fake-model"]


def test_server_that_refuses_json_schema_falls_back_and_counts():
    """A server without strict schemas: json_object + the schema in the prompt, validated."""

    def no_strict(n: int, body: dict) -> tuple[int, dict]:
        fmt = body.get("response_format", {})
        if fmt.get("type") == "json_schema":
            return 400, {"error": {"message": "response_format json_schema is not supported"}}
        assert fmt == {"type": "json_object"} and "schema" in body["messages"][-1]["content"]
        q = body["messages"][-1]["content"].split("\n")[0]
        text = '{"x": 1}' if q != "bad" else '{"x": "one"}'
        return 200, {"choices": [{"message": {"content": text}, "finish_reason": "stop"}]}

    c = Constraint.json_schema(
        {"type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"]}
    )
    counts = Counts()
    with serve(no_strict) as (url, fake):
        b = backend(url, concurrency=1)
        res = generate_checked(
            b, ask("a", "b", "bad", constraint=c), retries=1, counts=counts, progress=False
        )
    assert [r.value for r in res[:2]] == [{"x": 1}, {"x": 1}]
    assert res[2].invalid and res[2].value is None and res[2].attempts == 2
    assert counts.valid == 2 and counts.invalid == 1 and counts.retries == 1
    assert counts.fallbacks == 4  # a, b, bad and bad's retry all went through json_object
    refused = [x for x in fake.bodies if x.get("response_format", {}).get("type") == "json_schema"]
    assert len(refused) == 1  # refused once; the backend remembers


def test_choice_and_regex_use_guided_fields():
    with serve() as (url, fake):
        b = backend(url)
        b.generate(ask("a", constraint=Constraint.choice(["yes", "no"])), progress=False)
        b.generate(ask("b", constraint=Constraint.regex(r"\d+")), progress=False)
    assert fake.bodies[0]["guided_choice"] == ["yes", "no"]
    assert fake.bodies[1]["guided_regex"] == r"\d+"
