"""Input ablations: how much does the model rely on each input field, and does it read them?

This generalises the "orbital image triage" protocol. A model that classifies an image from
structured metadata (sensor, region, a textual observation) is evaluated under several
*conditions* built from the same records:

- ``full``: every field present (the reference all deltas are measured against);
- ``drop``: one field removed from the prompt. The accuracy lost is what the model took from it;
- ``noise``: one field's value replaced by random in-domain words. Unlike ``drop``, the prompt
  keeps its shape and length, so a fall here cannot be blamed on an unfamiliar layout;
- ``conflict``: one field's value swapped for the value of a record of *another* class. Whether
  the answer then follows the true class (the other fields, the evidence) or the donor's class
  (the swapped field) shows which field the model actually trusts (:func:`conflict_following`).

Record convention: a record used here carries ``"fields": {name: str}``, its input fields, and
the evaluation config gives a ``template`` with ``{name}`` placeholders, typically one field per
line::

    Sensor: {sensor}
    Region: {region}
    Observation: {observation}
    Classify the image.

Every condition, ``full`` included, re-renders the user message from the template, so the only
difference between two conditions is the ablated field, never the wording of the prompt.
Transformed records keep their ``id`` (conditions compare record by record) and gain
``"condition": name``. Records that cannot take part in a condition (no ``fields``, a field the
template needs is missing, no donor of another class) are left out of *that* condition and
counted in its report: never a crash, never silently dropped.
"""

from __future__ import annotations

import copy
import hashlib
import random
import string
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any

from specialize.config import (
    AblationCondition,
    AblationConfig,
    load_ablation_config,
    template_placeholders,
)
from specialize.data.read import Record
from specialize.errors import SpecializeError

__all__ = [
    "AblationCondition",
    "AblationConfig",
    "apply_condition",
    "build_conditions",
    "check_template",
    "conflict_following",
    "load_ablation_config",
    "render_user",
    "template_fields",
]

TEMPLATE_FIELD = "eval.ablations.template"
_MAX_SKIPPED_IDS = 20


# ------------------------------------------------------------------------------- templates


def template_fields(template: str) -> list[str]:
    """The field names a template references, in order of first use.

    Raises :class:`SpecializeError` (field ``eval.ablations.template``) when the template is
    malformed, so a bad template stops the run before any model is loaded.
    """
    try:
        return template_placeholders(template)
    except ValueError as e:
        raise SpecializeError(str(e), field=TEMPLATE_FIELD) from None


def render_user(template: str, fields: Mapping[str, Any], drop: Collection[str] = ()) -> str:
    """The user message for one record: the template with its placeholders filled in.

    Every template line that references a field in ``drop`` is removed entirely, with its line
    break and nothing else. A field referenced inline in a line that also holds other text or
    other fields takes the *whole* line with it ("Sensor: {sensor}, band {band}" goes when
    either is dropped): a half line such as "Sensor: , band X" would itself tell the model that
    something is missing, and dropping must remove information, not add a cue. Give each field
    its own line for the cleanest ablation.

    Values are inserted verbatim (never passed through ``str.format``), so braces inside a value
    are safe. A placeholder without a value in ``fields`` that is not dropped raises
    :class:`SpecializeError`: silently rendering an empty field would be an unnoticed ablation.
    """
    template_fields(template)  # validate the whole template first (one error, not per line)
    dropped = set(drop)
    out: list[str] = []
    for line in template.split("\n"):
        pieces = list(string.Formatter().parse(line))
        names = {name for _, name, _, _ in pieces if name is not None}
        if names & dropped:
            continue
        text: list[str] = []
        for literal, name, _, _ in pieces:
            text.append(literal)
            if name is None:
                continue
            value = fields.get(name)
            if value is None:
                known = ", ".join(sorted(fields)) or "none"
                raise SpecializeError(
                    f"template placeholder '{{{name}}}' has no value in the record's fields "
                    f"(fields: {known})",
                    field=TEMPLATE_FIELD,
                )
            text.append(str(value))
        out.append("".join(text))
    return "\n".join(out)


def check_template(template: str, records: Iterable[Record]) -> list[str]:
    """The template's fields, after checking each is carried by at least one record.

    A placeholder that no record has is almost always a typo (``{sensr}``); without this check
    every record would be skipped as ``missing_field`` and the condition would come back empty.
    Raises :class:`SpecializeError` naming the first unknown placeholder.
    """
    names = template_fields(template)
    seen: set[str] = set()
    for rec in records:
        fields = rec.get("fields")
        if isinstance(fields, Mapping):
            seen.update(k for k, v in fields.items() if v is not None)
    for name in names:
        if name not in seen:
            known = ", ".join(sorted(seen)) or "none (records have no 'fields')"
            raise SpecializeError(
                f"unknown template placeholder '{{{name}}}': no record has that field "
                f"(record fields: {known})",
                field=TEMPLATE_FIELD,
            )
    return names


# ------------------------------------------------------------------------------- conditions


def _rng(seed: int, kind: str, field: str, rec_id: Any) -> random.Random:
    """A generator seeded by (seed, kind, field, record id) alone.

    Seeding per record, rather than drawing from one stream in record order, makes a record's
    noise or donor independent of which other records are evaluated and in what order: the
    same record gets the same ablation in every run, shard and subset. sha256 (not ``hash``)
    keeps it stable across processes.
    """
    key = f"{seed}\x00{kind}\x00{field}\x00{rec_id}".encode()
    return random.Random(int.from_bytes(hashlib.sha256(key).digest()[:8], "big"))


def _value(rec: Record, name: str) -> Any:
    fields = rec.get("fields")
    return fields.get(name) if isinstance(fields, Mapping) else None


def _noise_value(original: str, vocab: Sequence[str], rng: random.Random) -> str:
    """As many words as ``original`` has, drawn with replacement from ``vocab``.

    ``vocab`` holds every word occurrence of the field across all records (sorted, so record
    order does not matter), so words come at their usual frequencies: the value keeps the field's
    length and surface statistics (in-domain words, plausible word count) while its content, and
    any link to this record's class, is destroyed. A draw that equals the original is drawn
    again (a few times at most): a "noised" value that carries the full information would hide
    exactly the effect the condition measures.
    """
    n = len(original.split())
    if n == 0 or not vocab:
        return original
    target = original.split()
    words = rng.choices(vocab, k=n)
    for _ in range(20):
        if words != target:
            break
        words = rng.choices(vocab, k=n)
    return " ".join(words)


class _Donors:
    """Records that can lend a field's value, grouped by class, for conflict conditions.

    Donors are ordered by id within each class and classes by their string form, so the donor
    a record gets depends on the seed and its id only, never on record order.
    """

    def __init__(self, records: Sequence[Record], field: str, class_field: str) -> None:
        by_class: dict[Any, list[Record]] = {}
        for rec in records:
            cls = rec.get(class_field)
            if cls is None or _value(rec, field) is None:
                continue
            by_class.setdefault(cls, []).append(rec)
        self.field = field
        self.class_field = class_field
        self.classes = sorted(by_class, key=str)
        self.by_class = {c: sorted(v, key=lambda r: str(r.get("id"))) for c, v in by_class.items()}
        self._others: dict[Any, list[Record]] = {}

    def pick(self, rec: Record, rng: random.Random) -> Record | None:
        """A donor of another class whose value differs from ``rec``'s; None when none exists.

        Uniform over donor records (so conflict classes follow the data's class mix); a donor
        with the very same value would be no conflict, so the next one (cyclically) is taken.
        """
        own_class = rec.get(self.class_field)
        own_value = str(_value(rec, self.field))
        if own_class not in self._others:  # cached per class: O(n) per class, not per record
            self._others[own_class] = [
                r for c in self.classes if c != own_class for r in self.by_class[c]
            ]
        others = self._others[own_class]
        if not others:
            return None
        start = rng.randrange(len(others))
        for i in range(len(others)):
            donor = others[(start + i) % len(others)]
            if str(_value(donor, self.field)) != own_value:
                return donor
        return None


def _with_user(
    rec: Record, content: str, fields: dict[str, Any], name: str, keep_system: bool
) -> Record:
    """A deep copy of ``rec`` whose prompt (last user message) is ``content``."""
    out = copy.deepcopy(rec)
    msgs = out.get("messages") or []
    if not keep_system:
        msgs = [m for m in msgs if m.get("role") != "system"]
    users = [i for i, m in enumerate(msgs) if m.get("role") == "user"]
    if not users:
        raise SpecializeError(
            f"record '{rec.get('id')}' has no user message to re-render", field="messages"
        )
    msgs[users[-1]] = {**msgs[users[-1]], "content": content}
    out["messages"] = msgs
    out["fields"] = fields
    out["condition"] = name
    return out


def apply_condition(
    records: Sequence[Record],
    condition: AblationCondition,
    template: str,
    *,
    keep_system: bool = True,
) -> tuple[list[Record], dict[str, Any]]:
    """Transformed copies of ``records`` for one condition, and a report of what was left out.

    The input is never mutated. Each returned record is a deep copy with the user message
    re-rendered from ``template``, ``fields`` updated to what the prompt shows, the same ``id``
    and ``"condition": condition.name``. ``conflict`` records also get ``"conflict_label"`` (the
    donor's class) and ``"conflict_from"`` (the donor's id).

    A record is left out, and counted, when:

    - ``missing_field``: it has no ``fields``, or lacks a field the template uses or the
      condition's field. The same rule applies to every condition, so all conditions of a study
      score the same records (except the next two reasons);
    - ``missing_class`` (conflict): it has no ``class_field`` value, so "another class" is
      undefined;
    - ``no_other_class`` (conflict): no record of another class has the field with a different
      value.

    Noise vocabularies and conflict donors come from all of ``records``: pass the whole
    evaluation set, not a batch, for the same ablation in every run.

    Returns ``(records, report)`` with report ``{"condition", "kind", "field", "n", "skipped":
    {"missing_field", "missing_class", "no_other_class"}, "skipped_ids": [first 20]}``.
    """
    names = _checked_fields(records, condition, template)
    kind, field = condition.kind, condition.field
    vocab: list[str] = []
    donors: _Donors | None = None
    if kind == "noise":
        vocab = sorted(
            w for rec in records if (v := _value(rec, field)) is not None for w in str(v).split()
        )
    elif kind == "conflict":
        donors = _Donors(records, field, condition.class_field)

    skipped = {"missing_field": 0, "missing_class": 0, "no_other_class": 0}
    skipped_ids: list[Any] = []
    out: list[Record] = []

    def skip(rec: Record, reason: str) -> None:
        skipped[reason] += 1
        if len(skipped_ids) < _MAX_SKIPPED_IDS:
            skipped_ids.append(rec.get("id"))

    for rec in records:
        if any(_value(rec, n) is None for n in names):
            skip(rec, "missing_field")
            continue
        ablated = _ablate(rec, condition, vocab, donors)
        if isinstance(ablated, str):
            skip(rec, ablated)
            continue
        fields, drop, extra = ablated
        content = render_user(template, fields, drop=drop)
        new = _with_user(rec, content, fields, condition.name, keep_system)
        new.update(extra)
        out.append(new)

    report = {
        "condition": condition.name,
        "kind": kind,
        "field": field,
        "n": len(out),
        "skipped": skipped,
        "skipped_ids": skipped_ids,
    }
    return out, report


def _checked_fields(
    records: Sequence[Record], condition: AblationCondition, template: str
) -> list[str]:
    """The template's fields, after checking the condition and the record ids can be used."""
    names = check_template(template, records)
    field = condition.field
    if field is not None and field not in names:
        raise SpecializeError(
            f"condition '{condition.name}' ablates '{field}', which the template does not use "
            f"(template fields: {', '.join(names)})",
            field=f"eval.ablations.conditions.{condition.name}",
        )
    ids = [rec.get("id") for rec in records]
    if any(i is None for i in ids):
        raise SpecializeError(
            "every record needs an 'id': ablations are seeded by it and compared by it",
            field="id",
        )
    if len(set(map(str, ids))) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise SpecializeError(
            f"record id '{dup}' occurs more than once; conditions are compared by id", field="id"
        )
    return names


def _ablate(
    rec: Record, condition: AblationCondition, vocab: list[str], donors: _Donors | None
) -> tuple[dict[str, Any], tuple[str, ...], dict[str, Any]] | str:
    """One record's (fields, dropped fields, extra keys) under the condition, or why it
    cannot take part (``missing_class``, ``no_other_class``)."""
    kind, field = condition.kind, condition.field
    fields = dict(rec["fields"])
    if kind == "drop":
        fields.pop(field)
        return fields, (field,), {}
    if kind == "noise":
        rng = _rng(condition.seed, kind, field, rec["id"])
        fields[field] = _noise_value(str(fields[field]), vocab, rng)
        return fields, (), {}
    if kind == "conflict":
        assert donors is not None
        if rec.get(condition.class_field) is None:
            return "missing_class"
        donor = donors.pick(rec, _rng(condition.seed, kind, field, rec["id"]))
        if donor is None:
            return "no_other_class"
        fields[field] = _value(donor, field)
        extra = {"conflict_label": donor[condition.class_field], "conflict_from": donor["id"]}
        return fields, (), extra
    return fields, (), {}


def build_conditions(
    records: Sequence[Record], config: AblationConfig
) -> dict[str, tuple[list[Record], dict[str, Any]]]:
    """Every condition of ``config`` applied to ``records``: name -> (records, report), in order."""
    return {
        c.name: apply_condition(records, c, config.template, keep_system=config.keep_system)
        for c in config.conditions
    }


# ------------------------------------------------------------------------------- analysis


def conflict_following(
    records: Sequence[Record],
    preds: Iterable[Mapping[str, Any]],
    *,
    class_field: str = "label",
) -> dict[str, Any]:
    """Which side the model takes when one field contradicts the rest of the evidence.

    ``records`` are a conflict condition's records (each has ``conflict_label``); ``preds`` are
    dicts with ``id`` and ``parsed`` (the label read from the answer, None when unparseable).
    Over records whose prediction was parsed:

    - ``followed_evidence``: share predicting the true class (``record[class_field]``): the
      model weighed the other fields over the swapped one;
    - ``followed_conflict``: share predicting the donor's class: the swapped field decided;
    - ``other``: share predicting neither.

    Shares are over parsed predictions only (None when there are none), because an unparseable
    answer followed neither side; ``unparsed`` counts those answers so a model that stops
    answering cannot look balanced. ``n`` is the number of records with a prediction
    (``parsed`` + ``unparsed``); ``missing`` counts records without one.
    """
    by_id: dict[str, Mapping[str, Any]] = {}
    for p in preds:
        key = str(p["id"])
        if key in by_id:
            raise ValueError(f"prediction id '{key}' occurs more than once")
        by_id[key] = p
    n = unparsed = missing = evidence = conflict = other = 0
    for rec in records:
        if "conflict_label" not in rec:
            raise ValueError(
                f"record '{rec.get('id')}' has no conflict_label: pass a conflict condition's "
                "records (from apply_condition)"
            )
        pred = by_id.get(str(rec["id"]))
        if pred is None:
            missing += 1
            continue
        n += 1
        parsed = pred.get("parsed")
        if parsed is None:
            unparsed += 1
        elif str(parsed) == str(rec.get(class_field)):
            evidence += 1
        elif str(parsed) == str(rec["conflict_label"]):
            conflict += 1
        else:
            other += 1
    parsed_n = n - unparsed

    def share(k: int) -> float | None:
        return k / parsed_n if parsed_n else None

    return {
        "n": n,
        "parsed": parsed_n,
        "unparsed": unparsed,
        "missing": missing,
        "followed_evidence": share(evidence),
        "followed_conflict": share(conflict),
        "other": share(other),
    }
