"""The inference contract: one request type, one result type, one backend protocol.

Everything that asks a model for text goes through these types: evaluation, the LLM judge,
the GGUF round-trip checks, synthetic data generation and the server. A backend is "a thing
that answers :class:`Request` objects": the local Hugging Face engine
(:mod:`specialize.infer.hf`), a GGUF file through llama.cpp (:mod:`specialize.infer.llamacpp`)
or an OpenAI-compatible endpoint (:mod:`specialize.infer.http`). Callers never need to know
which one they hold, so a run can move its teacher, judge or evaluated variant from this laptop
to a vLLM cluster by changing one config entry.

Why dataclasses and not pydantic here: requests are built in tight loops (hundreds of
thousands for synthetic data) and carry live objects (a pydantic class to validate into);
pydantic validation of every request would cost more than it catches. The constraint's own
``validate`` is where pydantic earns its keep.
"""

from __future__ import annotations

import json
import queue
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, TypedDict, runtime_checkable

from pydantic import TypeAdapter, ValidationError

from specialize.errors import SpecializeError


class ChatMessage(TypedDict, total=False):
    """One OpenAI-style chat message (``content`` may be a list of parts for images)."""

    role: str
    content: Any
    thinking: str


FinishReason = Literal["stop", "length", "error"]


@dataclass(frozen=True)
class Sampling:
    """How the next token is chosen. ``temperature == 0`` is greedy (``top_p`` then unused).

    ``seed`` makes a sampled answer depend on the request alone, never on which other
    requests shared its batch (each request gets its own generator)."""

    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


GREEDY = Sampling()


class InvalidOutput(ValueError):
    """A constrained answer that does not parse or validate; ``reason`` is one line."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, eq=False)
class Constraint:
    """What a constrained answer must look like: a JSON schema, a regex or one of some choices.

    Build one with :meth:`of` (a pydantic model or any type pydantic can validate, like
    ``list[str]``), :meth:`json_schema`, :meth:`regex` or :meth:`choice`. ``validate`` turns the
    answer text into the checked Python value (the pydantic object for :meth:`of`), raising
    :class:`InvalidOutput`; every backend calls it, so a constrained result is either valid or
    counted invalid, never returned as if it were valid.
    """

    kind: Literal["json_schema", "regex", "choice"]
    schema: dict[str, Any] | None = None
    pattern: str | None = None
    choices: tuple[str, ...] = ()
    python_type: Any = None  # what json answers are validated into (None: the raw JSON value)
    name: str = "answer"

    # -- constructors
    @classmethod
    def of(cls, python_type: Any, name: str | None = None) -> Constraint:
        """A JSON answer validated into ``python_type`` (pydantic model, ``list[Model]``, ...)."""
        try:
            schema = TypeAdapter(python_type).json_schema()
        except Exception as err:  # noqa: BLE001 - pydantic raises several error types here
            msg = f"cannot build a JSON schema for {python_type!r}: {err}"
            raise SpecializeError(msg) from None
        label = name or getattr(python_type, "__name__", None) or "answer"
        return cls("json_schema", schema=schema, python_type=python_type, name=_safe_name(label))

    @classmethod
    def json_schema(cls, schema: dict[str, Any], name: str = "answer") -> Constraint:
        if not isinstance(schema, dict):
            raise SpecializeError("a JSON schema must be an object (a mapping)")
        return cls("json_schema", schema=schema, name=_safe_name(name))

    @classmethod
    def regex(cls, pattern: str) -> Constraint:
        try:
            re.compile(pattern)
        except re.error as err:
            raise SpecializeError(f"invalid regex {pattern!r}: {err}") from None
        return cls("regex", pattern=pattern, name="regex")

    @classmethod
    def choice(cls, choices: Sequence[str]) -> Constraint:
        opts = tuple(str(c) for c in choices)
        if not opts or any(not c for c in opts):
            raise SpecializeError("a choice constraint needs at least one non-empty choice")
        return cls("choice", choices=opts, name="choice")

    # -- checking
    def validate(self, text: str) -> Any:
        """The checked value of an answer, or :class:`InvalidOutput` saying why not."""
        if self.kind == "choice":
            if text in self.choices:
                return text
            # backends strip answers, so compare stripped (a choice may carry whitespace)
            found = [c for c in self.choices if c.strip() == text.strip()]
            if found:
                return found[0]
            raise InvalidOutput(f"not one of {len(self.choices)} choices: {_short(text)}")
        if self.kind == "regex":
            if re.fullmatch(self.pattern or "", text):
                return text
            raise InvalidOutput(f"does not match /{_short(self.pattern or '')}/: {_short(text)}")
        try:
            value = json.loads(text)
        except ValueError as err:
            raise InvalidOutput(f"not JSON ({err.msg} at char {err.pos}): {_short(text)}") from None
        if self.python_type is not None:
            try:
                return TypeAdapter(self.python_type).validate_python(value)
            except ValidationError as err:
                first = err.errors()[0]
                where = ".".join(str(p) for p in first.get("loc", ())) or "value"
                raise InvalidOutput(f"{where}: {first.get('msg')}") from None
        _check_json_schema(value, self.schema or {})
        return value


def first_stop(text: str, stop_strings: Sequence[str] | None) -> int:
    """Index of the earliest stop string in ``text`` (-1 if none); every backend cuts here."""
    hits = [i for i in (text.find(s) for s in stop_strings or () if s) if i >= 0]
    return min(hits) if hits else -1


def cut_at_stop(text: str, stop_strings: Sequence[str] | None) -> tuple[str, bool]:
    """``text`` up to the earliest stop string, and whether one was found."""
    cut = first_stop(text, stop_strings)
    return (text[:cut], True) if cut >= 0 else (text, False)


def _safe_name(name: str) -> str:
    """OpenAI's ``json_schema.name`` allows ``[A-Za-z0-9_-]{1,64}``."""
    return (re.sub(r"[^A-Za-z0-9_-]", "_", name) or "answer")[:64]


def _short(text: str, n: int = 80) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 3] + "..."


def _check_json_schema(value: Any, schema: dict[str, Any]) -> None:
    """Validate a plain JSON schema (no pydantic type given) with the jsonschema library."""
    import jsonschema

    try:
        jsonschema.validate(value, schema)
    except jsonschema.ValidationError as err:
        where = ".".join(str(p) for p in err.absolute_path) or "value"
        raise InvalidOutput(f"{where}: {_short(err.message)}") from None
    except jsonschema.SchemaError as err:
        raise SpecializeError(f"invalid JSON schema: {_short(err.message)}") from None


@dataclass
class Request:
    """One thing to answer: chat ``messages`` (rendered by the backend's chat format) or raw
    ``prompt_ids`` (local backends only), with its own sampling, budget, stops and constraint.

    ``adapter`` picks a LoRA adapter by name on backends that hold several over one base model
    (``None``: the backend's default; ``"base"``: no adapter). ``tag`` is the caller's
    (a record id, say) and is copied to the result untouched."""

    messages: list[ChatMessage] | None = None
    prompt_ids: list[int] | None = None
    max_new_tokens: int = 256
    sampling: Sampling = GREEDY
    stop: tuple[str, ...] = ()
    constraint: Constraint | None = None
    adapter: str | None = None
    tag: str | None = None

    def __post_init__(self) -> None:
        if (self.messages is None) == (self.prompt_ids is None):
            raise ValueError("a Request needs exactly one of messages or prompt_ids")
        if self.max_new_tokens <= 0:
            raise ValueError("max_new_tokens must be positive")
        self.stop = tuple(s for s in self.stop if s)


@dataclass
class Result:
    """The answer to one :class:`Request`.

    ``finish_reason``: ``stop`` (end of turn, stop string, or the constraint completed),
    ``length`` (ran out of ``max_new_tokens``), ``error`` (the backend could not answer; ``error``
    says why and ``text`` is empty). For a constrained request ``value`` holds the validated
    object, or ``invalid`` says why the answer did not validate (``value`` is then None and the
    result must not be used as valid). ``attempts`` counts tries (retries after invalid output).
    """

    text: str
    new_tokens: int
    finish_reason: FinishReason
    error: str | None = None
    value: Any = None
    invalid: str | None = None
    attempts: int = 1
    tag: str | None = None
    prompt_tokens: int | None = None  # as the backend counted them, where it says

    @property
    def ok(self) -> bool:
        """Answered, and valid when it was constrained."""
        return self.error is None and self.invalid is None

    @property
    def stopped(self) -> bool:
        return self.finish_reason == "stop"


class Ticket:
    """One submitted request: streamed text pieces, then its :class:`Result`.

    Backends that batch requests as they arrive (the HF engine, llama.cpp's batching loop)
    hand one back from ``submit``. The backend's worker thread calls :meth:`_piece` and
    :meth:`_finish`; any other thread reads with :meth:`stream` or :meth:`result`. ``cancel``
    asks the backend to drop the row at its next step (a client that went away should not keep
    a batch slot)."""

    def __init__(self, request: Request, prompt: list[int], index: int, stream: bool) -> None:
        self.request, self.prompt, self.index = request, prompt, index
        self.streaming = stream
        self.cancelled = False
        self._done = threading.Event()
        self._result: Result | None = None
        self._pieces: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self.callback: Callable[[Ticket], None] | None = None
        self.callback_error: BaseException | None = None  # re-raised by whoever waits

    def _piece(self, text: str) -> None:
        if text:
            self._pieces.put(text)

    def _finish(self, result: Result) -> None:
        self._result = result
        if self.callback is not None:  # before done: a waiter then sees the callback's work
            try:
                self.callback(self)
            except BaseException as err:  # noqa: BLE001 - the engine thread must live on
                self.callback_error = err
        self._pieces.put(None)
        self._done.set()

    def stream(self) -> Iterator[str]:
        """Text pieces as they are decided; joined, they equal the final ``Result.text``."""
        while True:
            piece = self._pieces.get()
            if piece is None:
                return
            yield piece

    @property
    def final(self) -> Result:
        """The result, for the ticket's own ``callback`` (which runs before waiters wake)."""
        assert self._result is not None
        return self._result

    def result(self, timeout: float | None = None) -> Result:
        if not self._done.wait(timeout):
            raise TimeoutError(f"no answer within {timeout:g}s")
        assert self._result is not None
        return self._result

    def done(self) -> bool:
        return self._done.is_set()

    def cancel(self) -> None:
        self.cancelled = True


OnResult = Callable[[int, Result], None]
# ``step(i, result)``: what chain ``i`` asks next after ``result`` (None: the chain is done)
Step = Callable[[int, Result], "Request | None"]


@runtime_checkable
class Backend(Protocol):
    """Anything that answers :class:`Request` objects.

    ``generate`` returns one result per request, in the caller's order, and calls
    ``on_result(index, result)`` as each one finishes (evaluation saves records as they come,
    so an interrupted run loses nothing). A request the backend cannot answer becomes a result
    with ``finish_reason == "error"``, never an exception, unless the backend cannot answer
    anything at all (an endpoint that never connected), which raises
    :class:`~specialize.errors.SpecializeError`.
    """

    name: str

    def generate(
        self,
        requests: Sequence[Request],
        *,
        progress: bool = True,
        desc: str = "generate",
        on_result: OnResult | None = None,
    ) -> list[Result]: ...

    def close(self) -> None: ...


@runtime_checkable
class StreamingBackend(Backend, Protocol):
    """A backend that also takes requests one at a time from any thread and streams tokens."""

    def submit(self, request: Request) -> Handle: ...


class Handle(Protocol):
    """A submitted request: its text pieces as they are produced, then its result."""

    def stream(self) -> Iterator[str]: ...

    def result(self, timeout: float | None = None) -> Result: ...

    def cancel(self) -> None: ...


@dataclass
class Counts:
    """What happened to a batch of constrained requests, for stats files and logs."""

    requests: int = 0
    valid: int = 0
    invalid: int = 0
    errors: int = 0
    retries: int = 0
    fallbacks: int = 0  # endpoint refused json_schema; json_object + validation used instead
    invalid_reasons: dict[str, int] = field(default_factory=dict)


def checked(result: Result, request: Request) -> Result:
    """``result`` with ``value`` (or ``invalid``) filled from the request's constraint.

    Every backend passes its results through here, so validation is the same everywhere: an
    answer that was cut by ``max_new_tokens`` or does not validate is ``invalid``, never valid.
    """
    c = request.constraint
    if c is None or result.error is not None or result.invalid is not None:
        return result
    try:
        result.value, result.invalid = c.validate(result.text), None
    except InvalidOutput as err:
        result.value = None
        cut = " (cut by max_new_tokens)" if result.finish_reason == "length" else ""
        result.invalid = err.reason + cut
    return result
