"""The HTTP backend: any OpenAI-compatible ``/v1/chat/completions`` endpoint.

For judges, teachers and models too big for this machine: point it at vLLM, llama.cpp's
server, a hosted API or another ``specialize serve``. Answers come back in the caller's order;
a request that still fails after its retries becomes a result with ``error`` set instead of an
exception, so a long run never loses the requests that did finish; only an endpoint that never
answered at all (wrong port, server not started) stops the run with a one-line
:class:`~specialize.errors.SpecializeError`.
"""

from __future__ import annotations

import http.client
import json
import threading
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from typing import Any

from tqdm.auto import tqdm

from specialize.errors import SpecializeError
from specialize.infer.types import Constraint, OnResult, Request, Result, checked, first_stop


class _Failure(Exception):
    """A request that failed for good; ``unreachable`` when no connection could be made."""

    def __init__(self, message: str, unreachable: bool = False, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.unreachable = unreachable
        self.status = status


def _one_line(text: str, limit: int = 200) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _reason(reason: Any) -> str:
    """'Connection refused' rather than '[Errno 111] Connection refused'."""
    return _one_line(getattr(reason, "strerror", None) or reason or "unknown error")


def _http_detail(err: urllib.error.HTTPError) -> str:
    try:
        body = err.read().decode("utf-8", "replace")
    except Exception:  # noqa: BLE001 - the body is only decoration for the message
        body = ""
    try:
        data = json.loads(body)
        inner = data.get("error", data) if isinstance(data, dict) else data
        msg = inner.get("message", inner) if isinstance(inner, dict) else inner
        body = msg if isinstance(msg, str) else json.dumps(msg)
    except ValueError:
        pass
    return f"HTTP {err.code}" + (f": {_one_line(body)}" if body.strip() else f" {err.reason}")


def _retry_after(err: urllib.error.HTTPError) -> float | None:
    try:
        return min(float(err.headers.get("Retry-After", "")), 60.0)
    except (TypeError, ValueError):
        return None


class OpenAIBackend:
    """An OpenAI-compatible chat-completions endpoint (vLLM, llama.cpp's server, ``specialize
    serve``, a hosted API), called with the standard library.

    ``base_url`` may be given with or without the trailing ``/v1``. Requests run ``concurrency``
    at a time (servers like vLLM batch concurrent requests, so this is the throughput knob).
    Connection errors, timeouts, HTTP 429 and 5xx are retried ``retries`` times with
    exponential backoff (``backoff * 2**k`` seconds, or the server's ``Retry-After``); other
    4xx errors are the request's fault and are not retried. Once one request has used up its
    retries on an unreachable endpoint, the requests still waiting give up at once; if every
    request of a call failed that way the call raises :class:`SpecializeError`, otherwise
    failed requests come back as results with ``error`` set.

    Constraints: a JSON schema is sent as ``response_format`` ``json_schema`` (strict), which
    vLLM, SGLang and llama.cpp's server decode under; a choice list or regex as vLLM's
    ``guided_choice`` / ``guided_regex``. A server that refuses (HTTP 400/422 on such a request)
    is asked again without the strict constraint (``json_object`` plus the schema in the prompt,
    or no constraint), from then on for every request; each such request counts in
    ``fallbacks``. The answer is validated either way (:func:`checked`), so a server that ignores
    the schema yields invalid results, not wrong objects.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        concurrency: int = 4,
        timeout: float = 60,
        retries: int = 4,
        backoff: float = 0.5,
    ) -> None:
        root = base_url.rstrip("/")
        if root.endswith("/v1"):
            root = root[: -len("/v1")]
        if not root.startswith(("http://", "https://")):
            raise SpecializeError(f"endpoint '{base_url}' must start with http:// or https://")
        self.root = root
        self.model = model
        self.api_key = api_key
        self.concurrency = max(1, int(concurrency))
        self.timeout = timeout
        self.retries = max(0, int(retries))
        self.backoff = backoff
        self.name = f"openai:{model}@{root}"
        self.fallbacks = 0
        self.refuses_constraints = False
        self._lock = threading.Lock()

    # -- transport

    def _call(self, path: str, payload: dict | None, dead: threading.Event) -> dict:
        """One request with retries; returns the decoded JSON body or raises :class:`_Failure`.

        ``dead`` is shared by the requests of one call: it is set when the endpoint proved
        unreachable, and waiting requests then stop instead of retrying on their own.
        """
        url = self.root + path
        data = json.dumps(payload).encode("utf-8") if payload is not None else None
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        last, unreachable = "no attempt made", False
        delay: float = 0.0
        for attempt in range(self.retries + 1):
            if dead.is_set() or (attempt and dead.wait(delay)):
                raise _Failure(f"skipped: endpoint {self.root} is unreachable", unreachable=True)
            delay = self.backoff * 2**attempt
            req = urllib.request.Request(url, data=data, headers=headers)
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    raw = resp.read()
            except urllib.error.HTTPError as err:
                last, unreachable = _http_detail(err), False
                if err.code != 429 and err.code < 500:
                    raise _Failure(last, status=err.code) from None
                delay = _retry_after(err) or delay
                continue
            except urllib.error.URLError as err:
                if isinstance(err.reason, TimeoutError):
                    last, unreachable = f"timed out after {self.timeout:g}s", False
                else:
                    last, unreachable = _reason(err.reason), True
                continue
            except TimeoutError:
                last, unreachable = f"timed out after {self.timeout:g}s", False
                continue
            except (OSError, http.client.HTTPException) as err:  # reset, bad status line...
                last, unreachable = _one_line(f"{type(err).__name__}: {err}"), False
                continue
            try:
                return json.loads(raw)
            except ValueError:
                raise _Failure(f"response is not JSON: {_one_line(raw[:200])}") from None
        what = "unreachable" if unreachable else "failed"
        if unreachable:
            dead.set()
        raise _Failure(f"{what} after {self.retries} retries ({last})", unreachable=unreachable)

    def _unreachable(self, failure: _Failure) -> SpecializeError:
        return SpecializeError(f"endpoint {self.root}: {failure.message}")

    def health_check(self) -> list[str]:
        """GET ``/v1/models`` once (with retries); the served model ids, or a one-line error."""
        try:
            data = self._call("/v1/models", None, threading.Event())
        except _Failure as f:
            raise self._unreachable(f) from None
        models = data.get("data") if isinstance(data, dict) else None
        return [str(m.get("id")) for m in models or [] if isinstance(m, dict)]

    # -- generation

    def payload(self, req: Request, fallback: bool = False) -> dict[str, Any]:
        """The request body; ``fallback`` drops what a server refused (see the class doc)."""
        if req.messages is None:
            raise SpecializeError("the HTTP backend needs chat messages, not prompt ids")
        messages = [dict(m) for m in req.messages]
        body: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "max_tokens": req.max_new_tokens,
            "temperature": req.sampling.temperature,
        }
        if req.sampling.top_p < 1.0:
            body["top_p"] = req.sampling.top_p
        if req.sampling.seed is not None:
            body["seed"] = req.sampling.seed
        if req.stop:
            body["stop"] = list(req.stop)
        c = req.constraint
        if c is None:
            return body
        if c.kind == "json_schema" and not fallback:
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": c.name, "schema": c.schema, "strict": True},
            }
        elif c.kind == "json_schema":
            body["response_format"] = {"type": "json_object"}
            last = messages[-1]
            if isinstance(last.get("content"), str):
                last["content"] = f"{last['content']}\n\n{_schema_hint(c)}"
        elif not fallback:
            key = "guided_choice" if c.kind == "choice" else "guided_regex"
            body[key] = list(c.choices) if c.kind == "choice" else c.pattern
        return body

    def _one(self, req: Request, dead: threading.Event) -> Result:
        fallback = self.refuses_constraints and req.constraint is not None
        try:
            data = self._call("/v1/chat/completions", self.payload(req, fallback), dead)
        except _Failure as f:
            if req.constraint is None or fallback or f.status not in (400, 422):
                raise
            with self._lock:
                self.refuses_constraints = True
            fallback = True
            data = self._call("/v1/chat/completions", self.payload(req, True), dead)
        if fallback:
            with self._lock:
                self.fallbacks += 1
        try:
            choice = data["choices"][0]
            text = (choice.get("message") or {}).get("content") or ""
            finish = choice.get("finish_reason")
        except (KeyError, IndexError, TypeError, AttributeError):
            raise _Failure(f"unexpected response: {_one_line(json.dumps(data))}") from None
        usage = data.get("usage") or {}
        tokens = usage.get("completion_tokens") if isinstance(usage, dict) else None
        text = str(text)
        cut = first_stop(text, req.stop) if req.stop else -1  # servers already do this
        if cut >= 0:
            text = text[:cut]
        return Result(
            text=text,
            new_tokens=int(tokens) if isinstance(tokens, int | float) else 0,
            finish_reason="stop" if finish == "stop" or cut >= 0 else "length",
            tag=req.tag,
        )

    def generate(
        self,
        requests: Sequence[Request],
        *,
        progress: bool = True,
        desc: str = "generate",
        on_result: OnResult | None = None,
    ) -> list[Result]:
        """Answers in the caller's order; ``new_tokens`` is 0 when the server reports no usage."""
        if not requests:
            return []
        dead = threading.Event()
        out: list[Result | None] = [None] * len(requests)
        failures: list[_Failure] = []
        bar = tqdm(
            total=len(requests), desc=desc, unit="rec", disable=not progress, dynamic_ncols=True
        )
        # At most `concurrency` requests in flight, and the next one is sent only after a
        # finished one's on_result returned: a caller that persists each answer there (the
        # synthetic-data cache) never has more than `concurrency` answers unwritten at a kill.
        waiting = iter(enumerate(requests))
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(requests))) as pool:
            futures: dict[Any, int] = {}

            def send_next() -> None:
                nxt = next(waiting, None)
                if nxt is not None:
                    futures[pool.submit(self._one, nxt[1], dead)] = nxt[0]

            for _ in range(min(self.concurrency, len(requests))):
                send_next()
            while futures:
                fut = next(iter(wait(futures, return_when=FIRST_COMPLETED).done))
                i = futures.pop(fut)
                try:
                    res = checked(fut.result(), requests[i])
                except _Failure as f:
                    failures.append(f)
                    res = Result("", 0, "error", error=f.message, tag=requests[i].tag)
                    bar.set_postfix(errors=len(failures), refresh=False)
                out[i] = res
                bar.update(1)
                if on_result is not None:
                    on_result(i, res)
                send_next()
        bar.close()
        if len(failures) == len(requests) and all(f.unreachable for f in failures):
            real = [f for f in failures if not f.message.startswith("skipped")]
            raise self._unreachable((real or failures)[0])
        return out  # type: ignore[return-value]

    def close(self) -> None:
        """Nothing to release: connections are opened per request."""


def _schema_hint(c: Constraint) -> str:
    """The schema as an instruction, for servers that only offer ``json_object`` mode (which
    also requires the word JSON in the conversation). Added to the last user turn, because
    some chat templates refuse a system message after the first turn."""
    return "Answer with one JSON value matching this schema: " + json.dumps(
        c.schema, separators=(",", ":")
    )
