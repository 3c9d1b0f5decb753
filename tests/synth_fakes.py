"""A deterministic fake teacher for synthetic-data tests: in process, or as an HTTP server.

It answers like an obedient teacher grounded in the passage: a JSON value valid under the
request's schema whose strings are words of the passage, a retrieval index pointing at the
passage that shares most words with the question, and free text made of passage words.
Answers depend only on the messages, so two runs give the same dataset; every answer is
counted, so tests can prove a rerun asks nothing twice.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from specialize.infer.types import Request, Result, checked

_PASSAGE = re.compile(r"^\[(\d+)\]\s*(.*)$")


def _words(text: str) -> list[str]:
    return re.findall(r"[A-Za-z][A-Za-z0-9-]+", text)


def _passages(user: str) -> tuple[list[str], str]:
    """Numbered passages ("[0] ...") and the rest of the message (the question)."""
    passages: list[str] = []
    rest: list[str] = []
    for para in user.split("\n"):
        m = _PASSAGE.match(para.strip())
        if m:
            passages.append(m.group(2))
        elif passages and para.strip() and not rest:
            passages[-1] += " " + para.strip()
        else:
            rest.append(para)
    return passages, "\n".join(rest)


def _instance(schema: dict[str, Any], root: dict[str, Any], words: list[str], seed: int) -> Any:
    """A small value valid under ``schema`` built from ``words``."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return _instance(root.get("$defs", {})[name], root, words, seed)
    for key in ("anyOf", "oneOf", "allOf"):
        if key in schema:
            return _instance(schema[key][0], root, words, seed)
    kind = schema.get("type")
    if kind == "object":
        props = schema.get("properties", {})
        return {k: _instance(v, root, words, seed + i) for i, (k, v) in enumerate(props.items())}
    if kind == "array":
        n = max(1, min(2, schema.get("maxItems", 2)))
        n = max(n, schema.get("minItems", 1))
        return [_instance(schema.get("items", {}), root, words, seed + 7 * i) for i in range(n)]
    if kind == "integer" or kind == "number":
        return max(0, schema.get("minimum", 0))
    if kind == "boolean":
        return True
    start = (seed * 5) % max(1, len(words) - 6)
    text = " ".join(words[start : start + 5]) or "text"
    return text[: schema.get("maxLength", 10_000)]


def answer(messages: Sequence[dict[str, str]], schema: dict[str, Any] | None) -> str:
    """The fake teacher's answer to a chat request (JSON under ``schema``, else text)."""
    user = messages[-1]["content"]
    passages, rest = _passages(user)
    words = _words(passages[0] if passages else user)
    seed = int(hashlib.sha256(user.encode()).hexdigest()[:6], 16) % 97
    if schema is None:  # words from the start and the end of the message (both passages)
        tail = _words(user)[-8:]
        return " ".join(words[seed % 5 + 6 : seed % 5 + 16] + tail) + "."
    value = _instance(schema, schema, words, seed)
    props = schema.get("properties", {})
    if "index" in props and passages:  # retrieval: the passage sharing most question words
        q = set(w.lower() for w in _words(rest))
        value["index"] = max(
            range(len(passages)), key=lambda i: len(q & {w.lower() for w in _words(passages[i])})
        )
    return json.dumps(value)


class FakeBackend:
    """The fake teacher as an in-process backend; ``calls`` counts requests answered."""

    name = "fake-teacher"

    def __init__(self, fail_after: int | None = None) -> None:
        self.calls = 0
        self.fail_after = fail_after

    def generate(self, requests, *, progress=True, desc="generate", on_result=None):
        out = []
        for i, req in enumerate(requests):
            if self.fail_after is not None and self.calls >= self.fail_after:
                res = Result("", 0, "error", error="connection refused")
            else:
                self.calls += 1
                schema = req.constraint.schema if req.constraint is not None else None
                res = checked(Result(answer(req.messages, schema), 10, "stop"), req)
            out.append(res)
            if on_result is not None:
                on_result(i, res)
        return out

    def close(self) -> None:
        pass


class FakeServer:
    """The fake teacher behind an OpenAI-compatible ``/v1/chat/completions`` on 127.0.0.1."""

    def __init__(self) -> None:
        self.calls = 0
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                self._send({"object": "list", "data": [{"id": "fake", "object": "model"}]})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fmt = body.get("response_format") or {}
                schema = (fmt.get("json_schema") or {}).get("schema")
                text = answer(body["messages"], schema)
                with server._lock:
                    server.calls += 1
                self._send(
                    {
                        "choices": [
                            {
                                "message": {"role": "assistant", "content": text},
                                "finish_reason": "stop",
                            }
                        ],
                        "usage": {"completion_tokens": 10},
                    }
                )

            def _send(self, obj: Any) -> None:
                data = json.dumps(obj).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def fake_request_answer(req: Request) -> str:
    return answer(req.messages or [], req.constraint.schema if req.constraint else None)
