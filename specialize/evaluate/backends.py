"""Generation backends: one interface over a local Hugging Face model and an HTTP server.

Evaluation and LLM-as-judge only need "answer these conversations", so both talk to a
:class:`Backend`: :class:`HFBackend` runs a model already in memory (the one just trained),
:class:`OpenAIBackend` calls any OpenAI-compatible ``/v1/chat/completions`` endpoint (vLLM,
llama.cpp server, a hosted API) for judges or models too big to load here.

Results always come back in the caller's order, one :class:`Generation` per conversation. A
remote request that still fails after its retries becomes a ``Generation`` with ``error`` set
instead of an exception, so a long run never loses the records that did finish; only an
endpoint that never answered at all (wrong port, server not started) stops the run with a
one-line :class:`~specialize.errors.SpecializeError`.
"""

from __future__ import annotations

import http.client
import json
import threading
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from tqdm.auto import tqdm

from specialize.errors import SpecializeError

Message = dict[str, Any]


@dataclass
class Generation:
    """One answer. ``error`` is set (and ``text`` empty) when the backend could not answer."""

    text: str
    new_tokens: int
    stopped: bool
    error: str | None = None


@runtime_checkable
class Backend(Protocol):
    """Anything that answers chat conversations.

    ``conversations`` are message lists ending with the user turn; the result has one
    :class:`Generation` per conversation, in the same order. ``json_schema`` constrains the
    answer to that schema and is only honoured when ``supports_json_schema`` is true (callers
    check it and otherwise rely on a tolerant parser).
    """

    name: str
    supports_json_schema: bool

    def generate(
        self,
        conversations: list[list[Message]],
        *,
        max_new_tokens: int,
        temperature: float = 0.0,
        seed: int | None = None,
        stop: list[str] | None = None,
        json_schema: dict | None = None,
        progress: bool = True,
        desc: str = "generate",
    ) -> list[Generation]: ...


def cut_at_stop(text: str, stop: Sequence[str] | None) -> tuple[str, bool]:
    """``text`` up to the earliest stop string, and whether one was found."""
    hits = [i for i in (text.find(s) for s in stop or () if s) if i >= 0]
    return (text[: min(hits)], True) if hits else (text, False)


# ------------------------------------------------------------------------------------ local HF


class HFBackend:
    """A Hugging Face model in memory, through :func:`specialize.evaluate.generate.generate`.

    Prompts are rendered with the run's chat format (:func:`render_prompt`), so the model sees
    exactly what it was trained on. ``supports_json_schema`` is False: there is no constrained
    decoding here, and ``json_schema`` is ignored (the judge parses free text tolerantly).
    Sampling (``temperature > 0``, seeded per record) and stop strings are passed to
    ``generate()``; stop strings are also applied to the decoded text afterwards.
    """

    supports_json_schema = False

    def __init__(self, model: Any, tokenizer: Any, fmt: str, batch_size: int = 16) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.fmt = fmt
        self.batch_size = batch_size
        self.name = f"hf:{getattr(getattr(model, 'config', None), '_name_or_path', '') or 'model'}"

    def generate(
        self,
        conversations: list[list[Message]],
        *,
        max_new_tokens: int,
        temperature: float = 0.0,
        seed: int | None = None,
        stop: list[str] | None = None,
        json_schema: dict | None = None,
        progress: bool = True,
        desc: str = "generate",
    ) -> list[Generation]:
        from specialize.evaluate import generate as gen_module  # at call time: tests patch it
        from specialize.models.chat import render_prompt, stop_token_ids

        if not conversations:
            return []
        extra: dict[str, Any] = {}
        if temperature > 0:
            extra.update(do_sample=True, temperature=temperature)
            if seed is not None:
                extra["seed"] = seed
        if stop:
            extra["stop_strings"] = list(stop)
        prompts = [render_prompt(c, self.tokenizer, self.fmt) for c in conversations]
        answers = gen_module.generate(
            self.model,
            self.tokenizer,
            prompts,
            stop_token_ids(self.tokenizer, self.fmt),
            max_new_tokens,
            self.batch_size,
            desc=desc,
            progress=progress,
            **extra,
        )
        out = []
        for a in answers:
            text, cut = cut_at_stop(a["text"], stop)
            out.append(
                Generation(
                    text=text.strip() if cut else text,
                    new_tokens=int(a["new_tokens"]),
                    stopped=bool(a["stopped"]) or cut,
                )
            )
        return out


# ------------------------------------------------------------------------- OpenAI-compatible


class _Failure(Exception):
    """A request that failed for good; ``unreachable`` when no connection could be made."""

    def __init__(self, message: str, unreachable: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.unreachable = unreachable


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
    """An OpenAI-compatible chat-completions endpoint, called with the standard library.

    ``base_url`` may be given with or without the trailing ``/v1``. Requests run ``concurrency``
    at a time (servers like vLLM batch concurrent requests, so this is the throughput knob).
    Connection errors, timeouts, HTTP 429 and 5xx are retried ``retries`` times with
    exponential backoff (``backoff * 2**k`` seconds, or the server's ``Retry-After``); other
    4xx errors are the request's fault and are not retried. Once one request has used up its
    retries on an unreachable endpoint, the requests still waiting give up at once instead of
    each spending the full backoff; if every request of a call failed that way the call raises
    :class:`SpecializeError`, otherwise failed records come back with ``error`` set.

    ``supports_json_schema`` is True: ``json_schema`` is sent as an OpenAI ``response_format``
    of type ``json_schema`` (strict), which vLLM and the llama.cpp server turn into
    constrained decoding.
    """

    supports_json_schema = True

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
                    raise _Failure(last) from None
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

    def _payload(
        self,
        messages: list[Message],
        max_new_tokens: int,
        temperature: float,
        seed: int | None,
        stop: list[str] | None,
        json_schema: dict | None,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "max_tokens": max_new_tokens,
            "temperature": temperature,
        }
        if seed is not None:
            body["seed"] = seed
        if stop:
            body["stop"] = list(stop)
        if json_schema is not None:
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "verdict", "schema": json_schema, "strict": True},
            }
        return body

    def _one(
        self, body: dict[str, Any], stop: list[str] | None, dead: threading.Event
    ) -> Generation:
        data = self._call("/v1/chat/completions", body, dead)
        try:
            choice = data["choices"][0]
            text = (choice.get("message") or {}).get("content") or ""
            finish = choice.get("finish_reason")
        except (KeyError, IndexError, TypeError, AttributeError):
            raise _Failure(f"unexpected response: {_one_line(json.dumps(data))}") from None
        usage = data.get("usage") or {}
        tokens = usage.get("completion_tokens") if isinstance(usage, dict) else None
        text, cut = cut_at_stop(str(text), stop)  # servers already do this; harmless if so
        return Generation(
            text=text,
            new_tokens=int(tokens) if isinstance(tokens, int | float) else 0,
            stopped=finish == "stop" or cut,
        )

    def generate(
        self,
        conversations: list[list[Message]],
        *,
        max_new_tokens: int,
        temperature: float = 0.0,
        seed: int | None = None,
        stop: list[str] | None = None,
        json_schema: dict | None = None,
        progress: bool = True,
        desc: str = "generate",
    ) -> list[Generation]:
        """Answers in the caller's order; ``new_tokens`` is 0 when the server reports no usage."""
        if not conversations:
            return []
        dead = threading.Event()
        bodies = [
            self._payload(list(c), max_new_tokens, temperature, seed, stop, json_schema)
            for c in conversations
        ]
        out: list[Generation | None] = [None] * len(bodies)
        failures: list[_Failure] = []
        bar = tqdm(
            total=len(bodies), desc=desc, unit="rec", disable=not progress, dynamic_ncols=True
        )
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(bodies))) as pool:
            futures = {pool.submit(self._one, b, stop, dead): i for i, b in enumerate(bodies)}
            for fut in as_completed(futures):
                i = futures[fut]
                try:
                    out[i] = fut.result()
                except _Failure as f:
                    failures.append(f)
                    out[i] = Generation(text="", new_tokens=0, stopped=False, error=f.message)
                    bar.set_postfix(errors=len(failures), refresh=False)
                bar.update(1)
        bar.close()
        if len(failures) == len(bodies) and all(f.unreachable for f in failures):
            real = [f for f in failures if not f.message.startswith("skipped")]
            raise self._unreachable((real or failures)[0])
        return out  # type: ignore[return-value]


# ------------------------------------------------------------------------------------ factory


def make_backend(
    spec: dict[str, Any],
    model: Any = None,
    tokenizer: Any = None,
    fmt: str | None = None,
) -> Backend:
    """A backend from a config mapping.

    ``{"type": "openai", "base_url": ..., "model": ..., ...}`` builds an
    :class:`OpenAIBackend` (other keys are its keyword arguments); ``{"type": "hf",
    "batch_size": 16}`` wraps the ``model``/``tokenizer``/``fmt`` the caller already loaded.
    """
    spec = dict(spec)
    kind = spec.pop("type", "openai")
    if kind == "openai":
        missing = [k for k in ("base_url", "model") if not spec.get(k)]
        if missing:
            raise SpecializeError(f"openai backend needs {', '.join(missing)}", field="backend")
        try:
            return OpenAIBackend(**spec)
        except TypeError as err:
            raise SpecializeError(f"openai backend: {err}", field="backend") from None
    if kind == "hf":
        if model is None or tokenizer is None or fmt is None:
            raise SpecializeError("hf backend needs a loaded model, tokenizer and chat format")
        return HFBackend(model, tokenizer, fmt, batch_size=int(spec.get("batch_size", 16)))
    raise SpecializeError(f"unknown backend type '{kind}' (openai or hf)", field="backend.type")
