"""The synthetic-data task catalog: one definition per task, shared by every stage.

A :class:`Task` says what a record is made from (one chunk, a text prefix, two passages, a
question and numbered passages), the instruction the student sees (:meth:`Task.user_message`:
generation, training, evaluation and the typed API all use exactly this string), what the
teacher additionally sees (:meth:`Task.teacher_messages`), the output's JSON schema (the
constraint the teacher decodes under, :meth:`Task.constraint`), how an answer is parsed
(:meth:`Task.parse`), rendered as the trained assistant message (:meth:`Task.render`), split
into items for field-level F1 (:meth:`Task.items`) and filtered (:meth:`Task.check`).

The seven built-ins (:data:`BUILTIN`) have Python output models; user tasks come from the
config (``synth.tasks``, ``synth.tasks_file``: an instruction and an optional JSON schema) or
from Python (``python: "module:attr"``). :func:`load_catalog` builds and checks them all
(placeholders, schemas compiled by llguidance) before any model loads, and
:meth:`Catalog.to_json` is written to the run as ``tasks.json`` so later stages use the very
same strings. A task's :meth:`~Task.fingerprint` changes whenever anything the teacher or the
student sees changes, so cached teacher answers are never reused for a different task.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeVar, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from specialize.config import SynthConfig, SynthFilterConfig, SynthTaskConfig, template_placeholders
from specialize.data.filters import is_copy, is_refusal, mentions, support
from specialize.errors import SpecializeError
from specialize.infer.constraints import check_constraint
from specialize.infer.types import ChatMessage, Constraint, InvalidOutput
from specialize.io import read_text

if TYPE_CHECKING:
    from specialize.data.chunk import Chunk

__all__ = [
    "BUILTIN",
    "PLACEHOLDERS",
    "QUESTION",
    "Bullets",
    "Catalog",
    "InputKind",
    "QAPair",
    "QAPairs",
    "Question",
    "RetrievalResult",
    "Task",
    "TaskInput",
    "Triplet",
    "Triplets",
    "load_catalog",
]

InputKind = Literal["chunk", "prefix", "question_passages", "pair"]

# The placeholders each input kind fills in; an instruction must use exactly these.
PLACEHOLDERS: dict[str, tuple[str, ...]] = {
    "chunk": ("passage",),
    "prefix": ("prefix",),
    "pair": ("passage_a", "passage_b"),
    "question_passages": ("question", "passages"),
}


# -- output models. The bounds keep a small teacher's constrained output finite: a grammar
# with unbounded strings and lists lets random logits run to the token budget.
class _Output(BaseModel):
    model_config = ConfigDict(extra="forbid")


class QAPair(_Output):
    question: str = Field(min_length=10, max_length=300)
    answer: str = Field(min_length=2, max_length=300)


class Triplet(_Output):
    subject: str = Field(min_length=2, max_length=120)
    relation: str = Field(min_length=2, max_length=80)
    object: str = Field(min_length=2, max_length=120)


class RetrievalResult(_Output):
    index: int = Field(ge=0, le=99)
    reasoning: str = Field(min_length=10, max_length=400)


class Bullets(_Output):
    bullets: list[Annotated[str, Field(min_length=12, max_length=200)]] = Field(
        min_length=1, max_length=6
    )


class QAPairs(_Output):
    pairs: list[QAPair] = Field(min_length=1, max_length=4)


class Triplets(_Output):
    triplets: list[Triplet] = Field(min_length=1, max_length=6)


class Question(_Output):
    question: str = Field(min_length=10, max_length=300)


@dataclass(frozen=True)
class TaskInput:
    """What one record is made from (see :data:`PLACEHOLDERS` for what each kind fills in)."""

    chunks: tuple[Chunk, ...]  # chunk/prefix: 1; pair: 2; question_passages: k passages
    question: str | None = None  # question_passages
    target: int | None = None  # question_passages: index in chunks of the question's chunk
    prefix: str | None = None  # prefix: the text the model continues
    continuation: str | None = None  # prefix: the document's real continuation (the answer)


@dataclass(frozen=True)
class Task:
    """One task of the catalog (see the module docstring). ``schema`` is derived from
    ``output`` when not given; neither: a free-text task. ``unwrap`` names the field the typed
    API returns (None: the whole value). ``grounded``: :meth:`check` applies the grounding
    filter. Bump ``version`` to invalidate cached teacher answers without changing text."""

    name: str
    instruction: str
    input_kind: InputKind = "chunk"
    output: type[BaseModel] | None = None
    schema: dict[str, Any] | None = None
    unwrap: str | None = None
    probability: float = 0.25
    teacher_system: str = ""
    grounded: bool = True
    version: str = "1"

    def __post_init__(self) -> None:
        if self.output is not None and self.schema is None:
            schema = Constraint.of(self.output).schema
            object.__setattr__(self, "schema", schema)
        _validate(self)
        payload = [
            self.name,
            self.instruction,
            self.input_kind,
            self.schema,
            self.teacher_system,
            self.version,
        ]
        text = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        object.__setattr__(self, "_fingerprint", hashlib.sha256(text.encode()).hexdigest()[:16])
        object.__setattr__(self, "_constraint", None)

    def __hash__(self) -> int:
        return hash(self.fingerprint())

    def fingerprint(self) -> str:
        """sha256 (16 hex digits) of everything the teacher or the student sees of this task:
        name, instruction, input kind, schema, teacher guidance and version."""
        return self.__dict__["_fingerprint"]

    @property
    def structured(self) -> bool:
        return self.schema is not None

    @property
    def needs_teacher(self) -> bool:
        """False for a ``prefix`` task: its answer is the document's own continuation."""
        return self.input_kind != "prefix"

    # -- messages
    def user_message(self, inp: TaskInput) -> str:
        """The instruction filled in from ``inp``: exactly what the student is trained on and
        later called with."""
        return self.instruction.format(**_fields(self.input_kind, inp))

    def teacher_messages(self, inp: TaskInput) -> list[ChatMessage]:
        """A system message (the teacher's guidance and, for a structured task, one line
        sketching the JSON expected; omitted when both are empty) and the user message."""
        parts = [self.teacher_system.strip()]
        if self.schema is not None:
            parts.append(f"Reply with JSON only, shaped like: {_sketch(self.schema)}")
        system = "\n".join(p for p in parts if p)
        messages: list[ChatMessage] = [{"role": "system", "content": system}] if system else []
        messages.append({"role": "user", "content": self.user_message(inp)})
        return messages

    # -- answers
    def constraint(self) -> Constraint | None:
        """The teacher's decoding constraint (one object per task, so grammars compile once);
        None for a free-text task."""
        if self.schema is None:
            return None
        cached = self.__dict__["_constraint"]
        if cached is None:
            cached = Constraint(
                "json_schema", schema=self.schema, python_type=self.output, name=self.name
            )
            self.__dict__["_constraint"] = cached
        return cached

    def parse(self, text: str) -> Any:
        """A model's raw answer as the checked value: the output model, a JSON value (user
        schema tasks) or the stripped text. Surrounding whitespace and a Markdown code fence
        are tolerated; anything else invalid raises :class:`InvalidOutput` (an empty free-text
        answer too)."""
        text = text.strip()
        constraint = self.constraint()
        if constraint is None:
            if not text:
                raise InvalidOutput("empty answer")
            return text
        return constraint.validate(_unfence(text))

    def render(self, value: Any) -> str:
        """The assistant message trained on: compact JSON (the teacher's constrained form,
        keys in the output's order, non-ASCII kept) for a structured task, else the text."""
        if self.schema is None:
            if not isinstance(value, str):
                raise TypeError(f"task {self.name} answers text, got {type(value).__name__}")
            return value.strip()
        if isinstance(value, BaseModel):
            value = value.model_dump(mode="json")
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))

    def unwrapped(self, value: Any) -> Any:
        """What the typed API returns for a parsed value: its ``unwrap`` field, or the value."""
        if self.unwrap is None:
            return value
        if isinstance(value, BaseModel):
            return getattr(value, self.unwrap)
        return value[self.unwrap] if isinstance(value, dict) else value

    def items(self, value: Any) -> list[str]:
        """Flat strings compared item by item (field-level F1): a bullet each; ``"question
        answer"`` per pair; ``"subject relation object"`` per triplet; ``[str(index)]`` for
        retrieval; any other JSON value: every string/number/boolean leaf as ``"key.path:
        value"`` (list positions left out, so order does not matter); free text: ``[text]``."""
        if isinstance(value, Bullets):
            return [b.strip() for b in value.bullets]
        if isinstance(value, QAPairs):
            return [f"{p.question.strip()} {p.answer.strip()}" for p in value.pairs]
        if isinstance(value, Triplets):
            return [f"{t.subject} {t.relation} {t.object}".strip() for t in value.triplets]
        if isinstance(value, RetrievalResult):
            return [str(value.index)]
        if isinstance(value, str) and self.schema is None:
            return [value.strip()] if value.strip() else []
        if isinstance(value, BaseModel):
            value = value.model_dump(mode="json")
        return [f"{path}: {leaf}" if path else leaf for path, leaf in _leaves(value)]

    def repair(self, value: Any) -> tuple[Any, int]:
        """The answer without the items a small teacher repeated (the same bullet, question or
        triplet again, a triplet relating a thing to itself), and how many were dropped.

        A 135M teacher often writes two good triplets and then loops on the second; dropping
        the repeats keeps the good part (the record is then counted as repaired) instead of
        losing the record, and never teaches the student to loop. An answer with nothing left
        is returned as it was, for :meth:`check` to remove as ``repetition``."""
        if isinstance(value, Bullets):
            kept = _first_of_each(value.bullets, _norm)
            field = "bullets"
        elif isinstance(value, QAPairs):
            kept = _first_of_each(value.pairs, lambda p: _norm(p.question))
            field = "pairs"
        elif isinstance(value, Triplets):
            real = [t for t in value.triplets if _norm(t.subject) != _norm(t.object)]
            kept = _first_of_each(real, lambda t: _norm(f"{t.subject} {t.relation} {t.object}"))
            field = "triplets"
        else:
            return value, 0
        items = getattr(value, field)
        if not kept or len(kept) == len(items):
            return value, 0
        return value.model_copy(update={field: kept}), len(items) - len(kept)

    def check(self, value: Any, inp: TaskInput, filters: SynthFilterConfig) -> str | None:
        """None to keep the record, else the filter that removes it (``empty``, ``refusal``,
        ``repetition``, ``length``, ``copy``, ``retrieval_index``, ``grounding``). See
        :mod:`.filters`.

        Repetition: a small teacher loops, writing the same bullet, pair or triplet again, or a
        triplet whose subject is its object; such an answer teaches the student to loop.

        Grounding (``filters.grounding`` > 0 and ``grounded``): every QA answer, every
        bullet, and each triplet's subject and object must have at least that support in the
        chunk (each, not on average: one invented bullet spoils the record); a free-text chunk
        task (rephrase) the same as a whole; a pair task must mention both passages; any other
        JSON answer: the pooled support of its string leaves, enum and const values left out
        (labels need not occur in the passage)."""
        strings = [s for _, s in _leaves(_plain(value), numbers=False)]
        if _empty(value):
            return "empty"
        if filters.refusals and self.needs_teacher and any(is_refusal(s) for s in strings):
            return "refusal"
        if _repeats(value):
            return "repetition"
        if self.schema is None:
            n = len(str(value).split())
            if not filters.min_words <= n <= filters.max_words:
                return "length"
            if self.needs_teacher and self.input_kind == "chunk":
                if is_copy(str(value), inp.chunks[0].text):
                    return "copy"
        if isinstance(value, RetrievalResult) and inp.target is not None:
            if value.index != inp.target:
                return "retrieval_index"
        if not self.grounded or filters.grounding <= 0 or not self.needs_teacher:
            return None
        return None if self._grounded(value, inp, filters.grounding) else "grounding"

    def _grounded(self, value: Any, inp: TaskInput, threshold: float) -> bool:
        passage = _source_text(self.input_kind, inp)
        if isinstance(value, Bullets):
            claims = list(value.bullets)
        elif isinstance(value, QAPairs):
            claims = [p.answer for p in value.pairs]
        elif isinstance(value, Triplets):
            claims = [c for t in value.triplets for c in (t.subject, t.object)]
        elif isinstance(value, RetrievalResult):
            return True  # the index check is its grounding
        elif self.schema is None and self.input_kind == "pair":
            return mentions(str(value), inp.chunks[0].text, inp.chunks[1].text)
        elif self.schema is None:
            claims = [str(value)]
        else:
            labels = _enum_values(self.schema)
            claims = [
                " ".join(s for _, s in _leaves(_plain(value), numbers=False) if s not in labels)
            ]
        return all(support(c, passage) >= threshold for c in claims)


def _repeats(value: Any) -> bool:
    """The same item twice in a built-in list answer, or a triplet relating a thing to itself."""
    items: list[str] = []
    if isinstance(value, Bullets):
        items = list(value.bullets)
    elif isinstance(value, QAPairs):
        items = [p.question for p in value.pairs]
    elif isinstance(value, Triplets):
        if any(_norm(t.subject) == _norm(t.object) for t in value.triplets):
            return True
        items = [f"{t.subject} {t.relation} {t.object}" for t in value.triplets]
    norm = [_norm(i) for i in items]
    return len(set(norm)) < len(norm)


_T = TypeVar("_T")


def _first_of_each(items: Sequence[_T], key: Callable[[_T], str]) -> list[_T]:
    seen: set[str] = set()
    out = []
    for item in items:
        k = key(item)
        if k not in seen:
            seen.add(k)
            out.append(item)
    return out


def _norm(text: str) -> str:
    return " ".join(text.lower().split()).strip(" .")


def _empty(value: Any) -> bool:
    """Nothing in the answer: blank text; a built-in output with a blank string (a bullet, a
    triplet's object...; retrieval's reasoning may be blank, its index is the answer); any
    other JSON value with no non-blank leaf."""
    if isinstance(value, str):
        return not value.strip()
    if isinstance(value, RetrievalResult):
        return False
    leaves = [leaf for _, leaf in _leaves(_plain(value))]
    if isinstance(value, _Output):
        return not leaves or not all(leaf.strip() for leaf in leaves)
    return not any(leaf.strip() for leaf in leaves)


def _validate(task: Task) -> None:
    """The checks every task passes (built-in, config or Python): SpecializeError if not."""
    if not re.fullmatch(r"[a-z][a-z0-9_]*", task.name or ""):
        raise SpecializeError(f"task name {task.name!r} must be lowercase letters, digits, _")
    if task.input_kind not in PLACEHOLDERS:
        kinds = ", ".join(get_args(InputKind))
        raise SpecializeError(
            f"task '{task.name}': input {task.input_kind!r} is not one of {kinds}"
        )
    if not 0 <= task.probability <= 1:
        raise SpecializeError(f"task '{task.name}': probability must be between 0 and 1")
    if task.output is not None and not (
        isinstance(task.output, type) and issubclass(task.output, BaseModel)
    ):
        raise SpecializeError(f"task '{task.name}': output must be a pydantic model class")
    if task.schema is not None and not isinstance(task.schema, dict):
        raise SpecializeError(f"task '{task.name}': a JSON schema must be an object (a mapping)")
    if task.unwrap is not None and task.unwrap not in (task.schema or {}).get("properties", {}):
        raise SpecializeError(
            f"task '{task.name}': unwrap '{task.unwrap}' is not a property of its output"
        )
    if task.input_kind == "prefix" and task.schema is not None:
        raise SpecializeError(
            f"task '{task.name}': input 'prefix' answers with the document's own continuation, "
            "so it cannot have a JSON schema"
        )
    _check_placeholders(task)


def _check_placeholders(task: Task) -> None:
    want = PLACEHOLDERS[task.input_kind]
    shown = ", ".join("{" + p + "}" for p in want)
    try:
        used = template_placeholders(task.instruction)
    except ValueError as err:
        raise SpecializeError(
            f"task '{task.name}': instruction: {err}; write literal braces as {{{{ and }}}}"
        ) from None
    extra = [p for p in used if p not in want]
    missing = [p for p in want if p not in used]
    if extra or missing:
        bad = ", ".join("{" + p + "}" for p in extra)
        lacking = ", ".join("{" + p + "}" for p in missing)
        what = f"uses {bad}" if extra else ""
        what += (" and " if extra and missing else "") + (f"lacks {lacking}" if missing else "")
        raise SpecializeError(
            f"task '{task.name}': instruction {what}; input '{task.input_kind}' fills in "
            f"exactly {shown} (literal braces are written {{{{ and }}}})"
        )


def _fields(kind: str, inp: TaskInput) -> dict[str, str]:
    """The placeholder values of ``inp`` for input ``kind``; ValueError when it lacks them."""
    chunks = inp.chunks
    if kind == "chunk" and len(chunks) == 1:
        return {"passage": chunks[0].text.strip()}
    if kind == "prefix" and inp.prefix is not None:
        return {"prefix": inp.prefix.strip()}
    if kind == "pair" and len(chunks) == 2:
        return {"passage_a": chunks[0].text.strip(), "passage_b": chunks[1].text.strip()}
    if kind == "question_passages" and inp.question is not None and chunks:
        passages = "\n\n".join(f"[{i}] {c.text.strip()}" for i, c in enumerate(chunks))
        return {"question": inp.question.strip(), "passages": passages}
    raise ValueError(f"a '{kind}' task cannot be filled in from {inp!r}")


def _source_text(kind: str, inp: TaskInput) -> str:
    """The text an answer must be grounded in: the question's passage for retrieval, both
    passages for a pair, else the chunk."""
    if kind == "question_passages":
        return inp.chunks[inp.target or 0].text
    return "\n\n".join(c.text for c in inp.chunks)


def _plain(value: Any) -> Any:
    return value.model_dump(mode="json") if isinstance(value, BaseModel) else value


def _leaves(value: Any, path: str = "", numbers: bool = True) -> Iterator[tuple[str, str]]:
    """(key path, text) of each leaf of a JSON value: strings, and numbers and booleans
    unless ``numbers`` is False; nulls are skipped; list positions are not in the path."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _leaves(v, f"{path}.{k}" if path else str(k), numbers)
    elif isinstance(value, list | tuple):
        for v in value:
            yield from _leaves(v, path, numbers)
    elif isinstance(value, str):
        yield path, value
    elif numbers and isinstance(value, bool):
        yield path, "true" if value else "false"
    elif numbers and isinstance(value, int | float):
        yield path, json.dumps(value)


def _enum_values(schema: Any) -> set[str]:
    """Every string an ``enum`` or ``const`` anywhere in ``schema`` allows (labels)."""
    found: set[str] = set()
    if isinstance(schema, dict):
        for key, v in schema.items():
            if key == "enum" and isinstance(v, list):
                found.update(x for x in v if isinstance(x, str))
            elif key == "const" and isinstance(v, str):
                found.add(v)
            else:
                found |= _enum_values(v)
    elif isinstance(schema, list):
        for v in schema:
            found |= _enum_values(v)
    return found


_FENCE = re.compile(r"^```[A-Za-z0-9_-]*\s*\n?(.*?)\n?\s*```$", re.DOTALL)


def _unfence(text: str) -> str:
    m = _FENCE.match(text)
    return m.group(1).strip() if m else text


def _sketch(schema: Any, root: Any = None, depth: int = 0) -> str:
    """A one-line pseudo-JSON picture of what ``schema`` accepts (for the teacher's system
    message): ``{"bullets": [string, ... 1-6 items]}``."""
    root = schema if root is None else root
    if not isinstance(schema, dict) or depth > 4:
        return "..."
    if isinstance(schema.get("$ref"), str):
        return _sketch(_resolve(schema["$ref"], root), root, depth + 1)
    if "enum" in schema:
        return " | ".join(json.dumps(v, ensure_ascii=False) for v in schema["enum"])
    if "const" in schema:
        return json.dumps(schema["const"], ensure_ascii=False)
    for key in ("anyOf", "oneOf"):
        if isinstance(schema.get(key), list):
            return " | ".join(_sketch(s, root, depth + 1) for s in schema[key])
    kind = schema.get("type")
    if kind == "object" or isinstance(schema.get("properties"), dict):
        props = schema.get("properties") or {}
        inner = ", ".join(
            f"{json.dumps(k, ensure_ascii=False)}: {_sketch(v, root, depth + 1)}"
            for k, v in props.items()
        )
        return "{" + inner + "}"
    if kind == "array":
        lo, hi = schema.get("minItems"), schema.get("maxItems")
        count = (
            f" {lo or 0}-{hi} items" if hi is not None else f" at least {lo} items" if lo else ""
        )
        return f"[{_sketch(schema.get('items', {}), root, depth + 1)}, ...{count}]"
    if kind == "integer" and "minimum" in schema:
        return f"integer >= {schema['minimum']}"
    if isinstance(kind, list):
        return " | ".join(str(k) for k in kind)
    return str(kind) if kind else "value"


def _resolve(ref: str, root: Any) -> Any:
    node = root
    for part in ref.removeprefix("#/").split("/") if ref.startswith("#/") else []:
        node = node.get(part, {}) if isinstance(node, dict) else {}
    return node


# -- the built-ins
_ONLY_PASSAGE = "Use only what the passage says."

BUILTIN: dict[str, Task] = {
    t.name: t
    for t in (
        Task(
            "bullets",
            "Extract the key points of the following passage as a list of bullet points. "
            'Answer in JSON, with the list of points under "bullets".\n\n{passage}',
            output=Bullets,
            unwrap="bullets",
            teacher_system="You extract the key points of a passage. Each bullet is one short "
            "sentence stating one fact from the passage, in the passage's own words. "
            + _ONLY_PASSAGE,
        ),
        Task(
            "qa_pairs",
            "Write question-answer pairs about the following passage. Answer in JSON, with a "
            'list of objects with "question" and "answer" under "pairs".\n\n{passage}',
            output=QAPairs,
            unwrap="pairs",
            teacher_system="You write questions for a reading test. Each question can be "
            "answered from the passage alone; each answer is short and uses words from the "
            "passage.",
        ),
        Task(
            "rephrase",
            "Rephrase the following passage in your own words, keeping all of its facts."
            "\n\n{passage}",
            teacher_system="Rewrite the passage with different wording and sentence structure. "
            "Keep every fact, name and number, and add nothing. Reply with the rewritten text "
            "only.",
        ),
        Task("continuation", "Continue the following text.\n\n{prefix}", input_kind="prefix"),
        Task(
            "triplets",
            "Extract the facts of the following passage as subject-relation-object triplets. "
            'Answer in JSON, with a list of objects with "subject", "relation" and "object" '
            'under "triplets".\n\n{passage}',
            output=Triplets,
            unwrap="triplets",
            teacher_system="subject and object are short names or phrases copied from the "
            "passage; relation is a short verb phrase such as 'located in' or 'founded by'. "
            + _ONLY_PASSAGE,
        ),
        Task(
            "retrieval",
            "Which of the following passages answers the question? Answer in JSON, with the "
            'passage number as "index" and a short reason as "reasoning".'
            "\n\nQuestion: {question}\n\nPassages:\n\n{passages}",
            input_kind="question_passages",
            output=RetrievalResult,
            teacher_system="The passages are numbered from 0. index is the number of the one "
            "passage that answers the question; reasoning says why in one sentence.",
        ),
        Task(
            "comparison",
            "Compare the following two passages: what do they have in common, and how do they "
            "differ?\n\nPassage A:\n{passage_a}\n\nPassage B:\n{passage_b}",
            input_kind="pair",
            teacher_system="Write one short paragraph that says what each passage is about, "
            "what they share and how they differ, naming things from both. Use only what the "
            "passages say. Reply with the paragraph only.",
        ),
    )
}

QUESTION = Task(
    "question",
    "Write one question that the following passage answers. Answer in JSON, with the "
    'question under "question".\n\n{passage}',
    output=Question,
    unwrap="question",
    probability=0.0,
    teacher_system="Ask one specific question whose answer is stated in the passage, using the "
    "passage's words. Do not ask about the passage itself ('What does the passage say?').",
)
"""Auxiliary: the question a retrieval record is built around (asked of the question's chunk
before the retrieval record is made; never trained on itself)."""


class Catalog:
    """The run's tasks, by name, in order."""

    def __init__(self, tasks: Iterable[Task]) -> None:
        self._tasks: dict[str, Task] = {}
        for t in tasks:
            if not isinstance(t, Task):
                raise SpecializeError(f"a catalog holds Task objects, got {type(t).__name__}")
            if t.name in self._tasks:
                raise SpecializeError(f"task '{t.name}' is defined twice in the catalog")
            self._tasks[t.name] = t

    def __getitem__(self, name: str) -> Task:
        try:
            return self._tasks[name]
        except KeyError:
            raise KeyError(f"no task '{name}' (tasks: {', '.join(self._tasks)})") from None

    def __contains__(self, name: object) -> bool:
        return name in self._tasks

    def __iter__(self) -> Iterator[Task]:
        return iter(self._tasks.values())

    def __len__(self) -> int:
        return len(self._tasks)

    @property
    def names(self) -> list[str]:
        return list(self._tasks)

    def to_json(self) -> dict[str, Any]:
        """The catalog as plain data (the run's ``tasks.json``): every string a later stage
        needs to call the student exactly as it was trained."""
        return {"tasks": [_task_json(t) for t in self]}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Catalog:
        """The catalog :meth:`to_json` wrote. Built-ins (also with an overridden instruction)
        come back with their Python output types; other tasks are rebuilt from instruction
        and schema (a Python task's output type is not recorded: its values come back as
        JSON). A fingerprint that does not match the rebuilt task is an error."""
        entries = data.get("tasks") if isinstance(data, Mapping) else None
        if not isinstance(entries, list):
            raise SpecializeError("tasks.json must hold {'tasks': [...]}")
        return cls(_task_from_json(e, i) for i, e in enumerate(entries))


def _task_json(t: Task) -> dict[str, Any]:
    base = BUILTIN.get(t.name)
    return {
        "name": t.name,
        "instruction": t.instruction,
        "input_kind": t.input_kind,
        "schema": t.schema,
        "unwrap": t.unwrap,
        "probability": t.probability,
        "version": t.version,
        "fingerprint": t.fingerprint(),
        "builtin": base is not None and t.output is base.output and t.schema == base.schema,
        "teacher_system": t.teacher_system,
        "grounded": t.grounded,
    }


def _task_from_json(entry: Any, i: int) -> Task:
    where = f"tasks[{i}]"
    if not isinstance(entry, Mapping) or not isinstance(entry.get("name"), str):
        raise SpecializeError("a task entry must be a mapping with a name", field=where)
    name = entry["name"]
    common = {
        "instruction": entry.get("instruction", ""),
        "probability": float(entry.get("probability", 0.25)),
        "teacher_system": entry.get("teacher_system") or "",
        "version": str(entry.get("version", "1")),
    }
    base = BUILTIN.get(name)
    try:
        if entry.get("builtin") and base is not None and entry.get("schema") == base.schema:
            task = dataclasses.replace(base, **common, grounded=entry.get("grounded", True))
        else:
            task = Task(
                name,
                input_kind=entry.get("input_kind", "chunk"),
                schema=entry.get("schema"),
                unwrap=entry.get("unwrap"),
                grounded=bool(entry.get("grounded", True)),
                **common,
            )
    except SpecializeError as err:
        raise SpecializeError(err.message, field=where) from None
    want = entry.get("fingerprint")
    if want is not None and want != task.fingerprint():
        raise SpecializeError(
            f"task '{name}' does not match its recorded fingerprint (edited by hand?)",
            field=where,
        )
    return task


# -- loading the run's catalog
def load_catalog(synth: SynthConfig, base_dir: Path) -> Catalog:
    """The catalog of ``synth.tasks`` then the tasks of ``synth.tasks_file``, every task
    checked (names, placeholders, schemas compiled by llguidance, Python tasks imported).

    Paths (``tasks_file``; a ``json_schema`` given as a file) are relative to ``base_dir``
    (the config's folder); a schema file named in the tasks file is relative to that file's
    folder. Every problem is one :class:`SpecializeError` line naming the entry."""
    base_dir = Path(base_dir)
    entries = [(cfg, f"synth.tasks[{i}]", base_dir, None) for i, cfg in enumerate(synth.tasks)]
    if synth.tasks_file:
        path = base_dir / synth.tasks_file
        entries += [(cfg, f"[{i}]", path.parent, path) for i, cfg in enumerate(_read_file(path))]
    tasks: list[Task] = []
    first: dict[str, str] = {}
    for cfg, where, folder, path in entries:
        if cfg.name in first:
            raise SpecializeError(
                f"task '{cfg.name}' is defined twice (first at {first[cfg.name]})",
                path=path,
                field=f"{where}.name",
            )
        first[cfg.name] = where if path is None else f"{path.name} {where}"
        tasks.append(_load_task(cfg, folder, path, where))
    return Catalog(tasks)


def _read_file(path: Path) -> list[SynthTaskConfig]:
    """The entries of a tasks file (a YAML list in the shape of ``synth.tasks``)."""
    text = read_text(path)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        problem = getattr(err, "problem", None) or "invalid YAML"
        line = mark.line + 1 if mark is not None else None
        raise SpecializeError(f"not valid YAML: {problem}", path=path, line=line) from None
    if not isinstance(data, list) or not data:
        raise SpecializeError("a tasks file must be a non-empty YAML list of tasks", path=path)
    out = []
    for i, item in enumerate(data):
        try:
            out.append(SynthTaskConfig.model_validate(item))
        except ValidationError as err:
            first = err.errors()[0]
            where = ".".join([f"[{i}]", *(str(x) for x in first["loc"])])
            msg = first["msg"].removeprefix("Value error, ")
            if first["type"] == "missing":
                msg = "required field is missing"
            elif first["type"] == "extra_forbidden":
                msg = "unknown key"
            raise SpecializeError(msg, path=path, field=where) from None
    return out


class _EntryError(Exception):
    """A problem with one key of a task entry (turned into a located SpecializeError)."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key
        self.message = message


def _load_task(cfg: SynthTaskConfig, folder: Path, path: Path | None, where: str) -> Task:
    try:
        if cfg.name in BUILTIN:
            task = _builtin_task(cfg)
        elif cfg.python is not None:
            task = _python_task(cfg)
        else:
            task = _user_task(cfg, folder)
        constraint = task.constraint()
        if constraint is not None:
            try:
                check_constraint(constraint)
            except SpecializeError as err:
                raise _EntryError("json_schema", f"task '{task.name}': {err.message}") from None
    except _EntryError as err:
        raise SpecializeError(err.message, path=path, field=f"{where}.{err.key}") from None
    return task


def _builtin_task(cfg: SynthTaskConfig) -> Task:
    base = BUILTIN[cfg.name]
    for key in ("input", "json_schema", "python"):
        if getattr(cfg, key) is not None:
            raise _EntryError(
                key,
                f"'{cfg.name}' is a built-in task with a fixed input and output; "
                f"give your task another name to set its {key}",
            )
    extra = (cfg.teacher_system or "").strip()
    changes: dict[str, Any] = {"probability": cfg.probability}
    if cfg.instruction is not None:
        changes["instruction"] = cfg.instruction
    if extra:
        changes["teacher_system"] = f"{base.teacher_system}\n{extra}".strip()
    try:
        return dataclasses.replace(base, **changes)
    except SpecializeError as err:
        raise _EntryError("instruction", err.message) from None


def _python_task(cfg: SynthTaskConfig) -> Task:
    spec = cfg.python or ""
    for key in ("input", "json_schema"):
        if getattr(cfg, key) is not None:
            raise _EntryError(key, f"task '{cfg.name}' is defined in Python ({spec}); drop {key}")
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise _EntryError("python", f"'{spec}' is not 'module:attribute'")
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as err:  # noqa: BLE001 - any error of the user's module, in one line
        msg = " ".join(str(err).split()) or type(err).__name__
        raise _EntryError("python", f"cannot import module '{module_name}': {msg}") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise _EntryError("python", f"module '{module_name}' has no attribute '{attr}'")
        obj = getattr(obj, part)
    if not isinstance(obj, Task):
        raise _EntryError(
            "python", f"'{spec}' is a {type(obj).__name__}, not a specialize.data.tasks.Task"
        )
    changes: dict[str, Any] = {"name": cfg.name}
    if "probability" in cfg.model_fields_set:
        changes["probability"] = cfg.probability
    if cfg.instruction is not None:
        changes["instruction"] = cfg.instruction
    if cfg.teacher_system is not None:
        changes["teacher_system"] = cfg.teacher_system
    try:
        return dataclasses.replace(obj, **changes)
    except SpecializeError as err:
        raise _EntryError("python", err.message) from None


def _user_task(cfg: SynthTaskConfig, folder: Path) -> Task:
    if cfg.instruction is None:
        names = ", ".join(BUILTIN)
        raise _EntryError(
            "name",
            f"unknown task '{cfg.name}' (built-in: {names}); give it an instruction "
            "(and a json_schema) to define it",
        )
    schema = _schema_of(cfg, folder) if cfg.json_schema is not None else None
    try:
        return Task(
            cfg.name,
            cfg.instruction,
            input_kind=cfg.input or "chunk",
            schema=schema,
            probability=cfg.probability,
            teacher_system=(cfg.teacher_system or "").strip(),
        )
    except SpecializeError as err:
        key = "input" if "input 'prefix'" in err.message else "instruction"
        raise _EntryError(key, err.message) from None


def _schema_of(cfg: SynthTaskConfig, folder: Path) -> dict[str, Any]:
    """The entry's JSON schema (inline, or read from a .json file), checked against the JSON
    Schema meta-schema."""
    import jsonschema

    raw = cfg.json_schema
    if isinstance(raw, str):
        file = folder / raw
        try:
            raw = json.loads(read_text(file))
        except ValueError as err:
            line = getattr(err, "lineno", None)
            msg = getattr(err, "msg", None) or str(err)
            raise SpecializeError(f"not valid JSON: {msg}", path=file, line=line) from None
        if not isinstance(raw, dict):
            raise SpecializeError("a JSON schema file must hold an object", path=file)
    if not isinstance(raw, dict):
        raise _EntryError("json_schema", f"task '{cfg.name}': a JSON schema must be an object")
    try:
        jsonschema.validators.validator_for(raw).check_schema(raw)
    except jsonschema.SchemaError as err:
        at = "/".join(str(p) for p in err.absolute_path)
        msg = " ".join(err.message.split())
        raise _EntryError(
            "json_schema",
            f"task '{cfg.name}': invalid JSON schema{f' at {at}' if at else ''}: {msg}",
        ) from None
    return raw
