"""Scores of an answer to a task of the synthetic-data catalog (:mod:`specialize.data.tasks`).

Records generated from documents name their catalog task (``bullets``, ``qa_pairs``,
``triplets``, ``retrieval``, a user task...). With the run's catalog, such a record is scored
by its task instead of as an open answer:

- every structured task (one with a JSON schema): ``schema_valid``, 1.0 when
  ``task.parse(answer)`` succeeds, else 0.0 (the answer is then ``unparsed``, with its
  ``invalid_reason``); and ``field_f1``, the soft set F1 (:func:`soft_f1`) between
  ``task.items`` of the answer's value and of the reference's value (an invalid answer: 0.0);
- a record with a ``target`` (retrieval): ``index_accuracy``, the parsed passage index equal
  to ``target`` (or, without one, to the reference's index);
- a free-text task: ``exact_match`` and token ``f1`` against the reference, as for ``qa``
  (and BERTScore when a scorer is given).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from specialize.data.read import Record
from specialize.evaluate.metrics import best_over, exact_match, token_f1

if TYPE_CHECKING:
    from specialize.data.tasks import Catalog, Task


def catalog_task(rec: Record, catalog: Catalog | None) -> Task | None:
    """The catalog task a record names in its ``task`` field; None for any other record.

    Only an explicit ``task`` counts: a record without one stays ``qa``."""
    name = rec.get("task")
    if catalog is None or not isinstance(name, str) or name not in catalog:
        return None
    return catalog[name]


def is_open(task: str, catalog: Catalog | None) -> bool:
    """Whether rows of ``task`` are open text answers (``qa``, a free-text catalog task)."""
    if catalog is not None and task in catalog:
        return not catalog[task].structured
    return task == "qa"


def parse(task: Task, text: str) -> tuple[Any, str | None]:
    """(value, None) when ``text`` is a valid answer of ``task``, else (None, reason).

    ``ValueError`` covers :class:`~specialize.infer.types.InvalidOutput` and what a user
    task's own parser may raise (a JSON decode error, a pydantic validation error)."""
    try:
        return task.parse(text), None
    except ValueError as e:
        reason = str(getattr(e, "reason", "") or e).strip()
        return None, reason.splitlines()[0] if reason else "invalid answer"


def soft_f1(predicted: list[str], reference: list[str]) -> float:
    """Soft set F1 of two lists of items, with token F1 as the similarity of two items.

    Precision is the mean, over predicted items, of the best token F1 against any reference
    item; recall the same the other way; F1 = 2PR / (P + R). Two empty lists agree (1.0);
    one empty list against a non-empty one scores 0.0."""
    if not predicted and not reference:
        return 1.0
    if not predicted or not reference:
        return 0.0
    precision = sum(max(token_f1(p, r) for r in reference) for p in predicted) / len(predicted)
    recall = sum(max(token_f1(p, r) for p in predicted) for r in reference) / len(reference)
    return 2 * precision * recall / (precision + recall) if precision + recall else 0.0


def score_catalog(task: Task, rec: Record, text: str, references: list[str]) -> dict[str, Any]:
    """The scores of one answer to a catalog task (see the module docstring)."""
    if not task.structured:
        return {
            "exact_match": best_over(exact_match, text, references),
            "f1": best_over(token_f1, text, references),
        }
    value, reason = parse(task, text)
    ref_value, ref_reason = parse(task, rec["messages"][-1]["content"])
    if ref_reason is not None:  # check_records stops such records before generation
        raise ValueError(f"record '{rec.get('id')}': reference is not a valid {task.name}")
    ref_items = [str(x) for x in task.items(ref_value)]
    out: dict[str, Any] = {"schema_valid": float(reason is None)}
    items = [str(x) for x in task.items(value)] if reason is None else []
    out["field_f1"] = soft_f1(items, ref_items) if reason is None else 0.0
    if "target" in rec or task.name == "retrieval":
        target = rec.get("target")
        want = str(target) if target is not None else (ref_items[0] if ref_items else None)
        out["index_accuracy"] = float(reason is None and bool(items) and items[0] == want)
    out["unparsed"] = reason is not None
    if reason is not None:
        out["invalid_reason"] = reason
    return out
