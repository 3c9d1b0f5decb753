"""Which metrics apply to a record, and its scores for one generated answer.

A record's ``task`` field says how its answer is judged (chat records without one are
``qa``):

- ``qa``: open answer; exact match and token F1 (SQuAD normalisation, best over the reference
  and the record's ``answers``), plus BERTScore F1 when a scorer is available;
- ``mc``: multiple choice; the option letter is read from the answer (``extract_choice``) and
  compared with ``label``; log-likelihood scoring of the letters is done separately;
- ``tf``: true/false; ``extract_bool`` against ``label`` ("True"/"False");
- ``math``: the final number (``#### N``, else the last number) against ``answer``;
- ``classify``: the answer, normalised, must name one of ``choices``; compared with ``label``;
- a task of the synthetic-data catalog, when the evaluation has the run's catalog: scored by
  that task (schema validity, field-level F1, retrieval index; see ``task_scores.py``). A
  record's explicit ``task`` is looked up in the catalog first.

Every record of every task also gets its teacher-forced loss on the reference answer, so
loss and perplexity apply everywhere. An answer that cannot be parsed scores 0 and is counted
as ``unparsed``, never guessed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from specialize.data.read import Record
from specialize.errors import SpecializeError
from specialize.evaluate.metrics import (
    best_over,
    exact_match,
    extract_bool,
    extract_choice,
    extract_final_number,
    normalize_answer,
    numbers_equal,
    token_f1,
)
from specialize.evaluate.task_scores import catalog_task, score_catalog

if TYPE_CHECKING:
    from specialize.data.tasks import Catalog

TASKS = ("qa", "mc", "tf", "math", "classify")
LABELLED = ("mc", "tf", "classify")  # tasks with a class label: a classification report applies


def task_of(rec: Record, catalog: Catalog | None = None) -> str:
    """The record's task: a catalog task's name, one of ``TASKS``, or an error naming both."""
    if catalog_task(rec, catalog) is not None:
        return rec["task"]
    task = rec.get("task", "qa")
    if task not in TASKS:
        known = [*TASKS, *(catalog.names if catalog is not None else [])]
        raise SpecializeError(
            f"record '{rec.get('id')}': unknown task '{task}' (known: {', '.join(known)})",
            field="task",
        )
    return task


def references(rec: Record) -> list[str]:
    refs = [rec["messages"][-1]["content"]]
    extra = rec.get("answers")
    if isinstance(extra, list):
        refs += [str(a) for a in extra if str(a).strip()]
    return refs


def _letters(rec: Record) -> list[str]:
    return [chr(ord("A") + i) for i in range(len(rec.get("choices") or "ABCD"))]


def _classify(text: str, choices: list[str]) -> str | None:
    """The one choice the answer names: an exact (normalised) match, else the only choice
    whose normalised name occurs in it; None when none or several do."""
    norm = normalize_answer(text)
    names = {normalize_answer(c): c for c in choices}
    if norm in names:
        return names[norm]
    hits = [c for n, c in names.items() if n and f" {n} " in f" {norm} "]
    return hits[0] if len(hits) == 1 else None


def required_fields(task: str) -> tuple[str, ...]:
    return {"mc": ("label",), "tf": ("label",), "math": ("answer",), "classify": ("label",)}.get(
        task, ()
    )


def score_answer(rec: Record, text: str, catalog: Catalog | None = None) -> dict[str, Any]:
    """Per-record scores for one answer: numeric metrics plus what was parsed from it."""
    spec = catalog_task(rec, catalog)
    if spec is not None:
        return score_catalog(spec, rec, text, references(rec))
    task = task_of(rec)
    if task == "qa":
        refs = references(rec)
        return {
            "exact_match": best_over(exact_match, text, refs),
            "f1": best_over(token_f1, text, refs),
        }
    if task == "mc":
        choices = rec.get("choices")
        pred = extract_choice(text, _letters(rec), options=choices)
        return {"accuracy": float(pred == rec["label"]), "parsed": pred, "unparsed": pred is None}
    if task == "tf":
        b = extract_bool(text)
        pred = None if b is None else ("True" if b else "False")
        return {"accuracy": float(pred == rec["label"]), "parsed": pred, "unparsed": pred is None}
    if task == "math":
        num = extract_final_number(text)
        return {
            "accuracy": float(numbers_equal(num, str(rec["answer"]))),
            "parsed": num,
            "unparsed": num is None,
        }
    pred = _classify(text, [str(c) for c in rec.get("choices", [])])
    return {"accuracy": float(pred == rec["label"]), "parsed": pred, "unparsed": pred is None}


def option_conversations(rec: Record) -> list[list[dict[str, Any]]] | None:
    """For log-likelihood scoring: the conversation completed with each option's answer.

    Only ``mc`` and ``tf`` records have options (``check_records`` refuses a catalog whose
    task names shadow these)."""
    task = rec.get("task", "qa")
    if task == "mc":
        answers = _letters(rec)
    elif task == "tf":
        answers = ["True", "False"]
    else:
        return None
    prompt = rec["messages"][:-1]
    return [prompt + [{"role": "assistant", "content": a}] for a in answers]


def option_label(rec: Record, index: int) -> str:
    return _letters(rec)[index] if task_of(rec) == "mc" else ["True", "False"][index]
