"""The typed task API: a catalog task called with plain inputs, answered as a checked value.

The seed project warned its users to call the model with *exactly* the instruction strings it
was trained on; here there is nothing to copy by hand: the run's ``tasks.json`` holds each
task's instruction template and output schema, :func:`task_request` fills the template the
way the training records were filled (:meth:`~specialize.data.tasks.Task.user_message`) and
decodes under the schema, and :func:`task_value` validates the answer into the task's output
type. An answer that still fails validation (cut by ``max_tokens``) is a :class:`TaskFailed`
the caller sees, never a silently wrong object. The server's ``POST /v1/tasks/{name}`` and the
in-process :class:`specialize.client.Tasks` both go through these two functions, so the
answers are the same both ways.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from specialize.data.chunk import Chunk
from specialize.data.tasks import Task, TaskInput
from specialize.errors import SpecializeError
from specialize.infer.types import InvalidOutput, Request, Result

# the method name the typed client gives each built-in task (others: the task's own name)
METHODS = {
    "bullets": "extract_bullets",
    "qa_pairs": "generate_qa_pairs",
    "rephrase": "rephrase",
    "continuation": "continue_text",
    "triplets": "extract_triplets",
    "retrieval": "find_relevant",
    "comparison": "compare",
}


class TaskInputs(BaseModel):
    """The inputs of one task call; which fields are needed depends on the task's input kind:
    ``passage`` (chunk), ``prefix``, ``passage_a`` + ``passage_b`` (pair), ``question`` +
    ``passages`` (question_passages)."""

    model_config = ConfigDict(extra="forbid")

    passage: str | None = None
    prefix: str | None = None
    passage_a: str | None = None
    passage_b: str | None = None
    question: str | None = None
    passages: list[str] | None = Field(None, max_length=100)


NEEDS = {
    "chunk": ("passage",),
    "prefix": ("prefix",),
    "pair": ("passage_a", "passage_b"),
    "question_passages": ("question", "passages"),
}


class TaskFailed(SpecializeError):
    """The model's answer did not validate as the task's output (``reason`` says why)."""

    def __init__(self, task: str, reason: str) -> None:
        super().__init__(f"task {task}: the answer is not a valid {task} result ({reason})")
        self.reason = reason


def _chunk(text: str, i: int) -> Chunk:
    return Chunk("input", i, 0, len(text), text)


def task_input(task: Task, inputs: TaskInputs) -> TaskInput:
    """The :class:`TaskInput` for ``inputs``, or one line naming the missing/extra field."""
    need = NEEDS[task.input_kind]
    given = {k for k, v in inputs.model_dump().items() if v not in (None, "", [])}
    missing = [k for k in need if k not in given]
    extra = sorted(given - set(need))
    if missing or extra:
        what = f"needs {' and '.join(need)}"
        if extra:
            what += f", not {', '.join(extra)}"
        raise SpecializeError(f"task {task.name} {what}", field=(missing or extra)[0])
    if task.input_kind == "chunk":
        return TaskInput((_chunk(inputs.passage or "", 0),))
    if task.input_kind == "prefix":
        return TaskInput((_chunk(inputs.prefix or "", 0),), prefix=inputs.prefix)
    if task.input_kind == "pair":
        return TaskInput((_chunk(inputs.passage_a or "", 0), _chunk(inputs.passage_b or "", 1)))
    chunks = tuple(_chunk(p, i) for i, p in enumerate(inputs.passages or []))
    return TaskInput(chunks, question=inputs.question)


def task_request(
    task: Task, inputs: TaskInputs, *, max_tokens: int, adapter: str | None = None
) -> Request:
    """The request a task call makes: the trained instruction, greedy, under the schema."""
    user = task.user_message(task_input(task, inputs))
    return Request(
        messages=[{"role": "user", "content": user}],
        max_new_tokens=max_tokens,
        constraint=task.constraint(),
        adapter=adapter,
    )


def attempts(req: Request, retries: int) -> list[Request]:
    """The request and its retries, in order: exactly what
    :func:`~specialize.infer.structured.generate_checked` asks for an answer that does not
    validate, so a task retried by the server equals one retried in process."""
    from specialize.infer.structured import retry_request

    return [req] + [retry_request(req, k) for k in range(1, retries + 1)]


def task_value(task: Task, result: Result) -> Any:
    """The validated, unwrapped answer (``list[str]`` for bullets, ``list[QAPair]`` ...)."""
    if result.error is not None:
        raise SpecializeError(f"task {task.name}: {result.error}")
    try:
        value = task.parse(result.text)
    except InvalidOutput as err:
        why = err.reason + (" (cut by max_tokens)" if result.finish_reason == "length" else "")
        raise TaskFailed(task.name, why) from None
    return task.unwrapped(value)


def as_json(value: Any) -> Any:
    """A task value as plain JSON (pydantic objects dumped), for the HTTP answer."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, list):
        return [as_json(v) for v in value]
    return value
