"""External evaluation suites: public third-party datasets turned into evaluation records.

A fine-tuned specialist is only credible if it is measured on data nobody in this project
wrote. The datasets live outside the repository, in ``../shared/data`` (each with a SOURCE.md
giving repository, commit and licence); this module turns each one into the project's record
format so the ordinary evaluator can run on it:

``{"id", "messages": [system?, user, assistant=REFERENCE], "task", ...task fields, ...metadata}``

Tasks and their fields:

* ``qa``: open answer scored by SQuAD EM/F1. The assistant content is the first reference;
  the other distinct references are in ``answers``. SQuAD items also carry ``context`` (the
  passage, for a faithfulness judge).
* ``mc``: multiple choice. ``choices`` (option texts) and ``label`` (the correct letter, also
  the assistant content).
* ``tf``: true/false. ``label`` is ``"True"`` or ``"False"``, as is the assistant content.
* ``math``: GSM8K. ``answer`` is the final number as a string, commas removed.

Two kinds of bad input are told apart on purpose. A file that is not what it claims to be
(malformed JSON, a missing field, a wrong type, an MC answer that names no option) raises a
one-line :class:`SpecializeError` with file, line and field: the data folder is broken and
every number computed from it would be suspect. An item that is well-formed but unusable for
the task as posed (a multi-select MC item, an option with no text, a wrong number of options)
is the dataset's own quirk: it is skipped and counted by reason, so a report can say exactly
what was left out instead of dropping it silently.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from specialize.errors import SpecializeError

log = logging.getLogger("specialize")

Record = dict[str, Any]

ENV_VAR = "SPECIALIZE_SHARED_DATA"
# Project root is the parent of the ``specialize`` package; shared data sits beside it.
PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DATA_DIR = PROJECT_ROOT.parent / "shared" / "data"

TASKS = ("qa", "mc", "tf", "math")
LETTERS = "ABCDEFGHIJ"

QA_PASSAGE_INSTRUCTION = (
    "Answer the question using the passage. Reply with the shortest span from the passage."
)
MC_INSTRUCTION = "Answer with the letter of the correct option."
TF_INSTRUCTION = "Is this statement true or false? Answer with True or False."
MATH_INSTRUCTION = "Solve it step by step and end with '#### <number>'."

# GSM8K solutions carry calculator annotations such as ``<<16-3-4=9>>``. They are tool markup
# from the dataset's collection, not solution text: a model never writes them, so keeping them
# would inflate the reference loss with tokens nobody should predict.
_CALC_ANNOTATION = re.compile(r"<<[^<>]*>>")
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


class _Skip(Exception):
    """Raised by a loader for an item that is the dataset's own problem; ``reason`` is counted."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class SourceRow:
    """One parsed JSONL line plus where it came from, so every error can name file and line."""

    path: Path
    line: int
    data: dict[str, Any]

    def error(self, message: str, field: str | None = None) -> SpecializeError:
        return SpecializeError(message, path=self.path, line=self.line, field=field)

    def require(self, name: str) -> Any:
        if name not in self.data:
            raise self.error("missing field", name)
        return self.data[name]

    def text(self, name: str) -> str:
        """A required string field; empty text is an unusable item, not a broken file."""
        value = self.require(name)
        if not isinstance(value, str):
            raise self.error(f"must be a string, got {type(value).__name__}", name)
        if not value.strip():
            raise _Skip(f"empty {name}")
        return value.strip()

    def ident(self) -> str:
        """The source id when there is one (stable across releases), else file stem + line."""
        value = self.data.get("id")
        if value is None or (isinstance(value, str) and not value.strip()):
            return f"{self.path.stem}:{self.line}"
        if not isinstance(value, str | int):
            raise self.error(f"must be a string or integer, got {type(value).__name__}", "id")
        return str(value).strip()


Loader = Callable[[SourceRow], Record]


@dataclass(frozen=True)
class SuiteSpec:
    """How one external dataset becomes an evaluation suite.

    ``paths`` are relative to the shared data folder and read in order; ``max_new_tokens`` is a
    recommendation sized to the references (long enough not to truncate a correct answer, short
    enough that a rambling model does not dominate the wall time).
    """

    name: str
    task: str
    paths: tuple[str, ...]
    loader: Loader
    system_prompt: str
    max_new_tokens: int
    citation: str
    license: str
    metric: str
    description: str


# --------------------------------------------------------------------------- record builders


def _chat(user: str, reference: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": user}, {"role": "assistant", "content": reference}]


def _dedupe(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


def _mc_record(row: SourceRow, question: str, options: list[str], label: str) -> Record:
    listed = "\n".join(f"{LETTERS[i]}. {text}" for i, text in enumerate(options))
    user = f"{question}\n\n{listed}\n\n{MC_INSTRUCTION}"
    return {
        "id": row.ident(),
        "messages": _chat(user, label),
        "task": "mc",
        "choices": options,
        "label": label,
    }


def _mc_label(row: SourceRow, answer: Any, n_options: int) -> str:
    """The single correct letter; a multi-letter answer is a multi-select item (skipped)."""
    if not isinstance(answer, str) or not answer.strip():
        raise row.error("must be an option letter", "answer")
    letter = answer.strip().upper()
    allowed = LETTERS[:n_options]
    if len(letter) > 1 and all(ch in allowed for ch in letter):
        raise _Skip("multi-select answer")
    if letter not in allowed:
        raise row.error(
            f"answer '{answer}' is not among the options {allowed[0]}-{allowed[-1]}", "answer"
        )
    return letter


def _options(row: SourceRow, expected: int | None) -> list[str]:
    """Option texts in letter order, from a list or a ``{letter: text}`` dict."""
    raw = row.require("choices")
    if isinstance(raw, dict):
        keys = [str(k).strip().upper() for k in raw]
        if sorted(keys) != list(LETTERS[: len(keys)]):
            raise _Skip("option letters not consecutive from A")
        values = [raw[k] for k in sorted(raw, key=lambda k: str(k).strip().upper())]
    elif isinstance(raw, list):
        values = raw
    else:
        raise row.error(
            f"must be a list or a letter->text object, not {type(raw).__name__}", "choices"
        )
    if any(v is not None and not isinstance(v, str | int | float) for v in values):
        raise row.error("option texts must be strings", "choices")
    if any(v is None or not str(v).strip() for v in values):
        raise _Skip("empty option")
    if len(values) > len(LETTERS):
        raise _Skip("wrong number of options")
    if expected is not None and len(values) != expected:
        raise _Skip("wrong number of options")
    if len(values) < 2:
        raise _Skip("wrong number of options")
    return [str(v).strip() for v in values]


# --------------------------------------------------------------------------- loaders


def load_squad_row(row: SourceRow) -> Record:
    """SQuAD v1.1 space subset: passage + question -> span; subset from the file name."""
    context, question = row.text("context"), row.text("question")
    raw = row.require("answers")
    if not isinstance(raw, list) or not all(isinstance(a, str) for a in raw):
        raise row.error("must be a list of strings", "answers")
    refs = _dedupe([a.strip() for a in raw if a.strip()])
    if not refs:
        raise _Skip("no reference answer")
    user = f"{QA_PASSAGE_INSTRUCTION}\n\nPassage: {context}\n\nQuestion: {question}"
    rec: Record = {
        "id": row.ident(),
        "messages": _chat(user, refs[0]),
        "task": "qa",
        "answers": refs[1:],
        "context": context,
        "title": row.text("title"),
        # squad_space_core.jsonl -> core, squad_space_peripheral.jsonl -> peripheral
        "subset": row.path.stem.rsplit("_", 1)[-1],
    }
    if isinstance(row.data.get("split"), str):
        rec["split"] = row.data["split"]
    return rec


def load_astro_open_row(row: SourceRow) -> Record:
    """Astro-QA open question: the official prompt (it sets a length target) -> reference."""
    row.text("question")  # the prompt embeds it; still required so a broken row is caught
    rec: Record = {
        "id": row.ident(),
        "messages": _chat(row.text("prompt"), row.text("reference_answer")),
        "task": "qa",
        "answers": [],
    }
    return _astro_meta(row, rec)


def load_astro_mcq_row(row: SourceRow) -> Record:
    """Astro-QA MCQ: ``choices`` is a letter->text dict; the file type fixes the option count."""
    qtype = row.data.get("type")
    expected = {"single_choice_4": 4, "single_choice_5": 5, "multi_choice_4": 4}.get(qtype)
    question = row.text("question")
    options = _options(row, expected)
    label = _mc_label(row, row.require("answer"), len(options))
    return _astro_meta(row, _mc_record(row, question, options, label))


def load_astro_tf_row(row: SourceRow) -> Record:
    """Astro-QA judgment item: a statement whose ``answer`` is a boolean."""
    statement = row.text("question")
    answer = row.require("answer")
    if isinstance(answer, str) and answer.strip().lower() in ("true", "false"):
        answer = answer.strip().lower() == "true"
    if not isinstance(answer, bool):
        raise row.error(f"must be true or false, got {answer!r}", "answer")
    label = "True" if answer else "False"
    user = f"Statement: {statement}\n\n{TF_INSTRUCTION}"
    rec: Record = {"id": row.ident(), "messages": _chat(user, label), "task": "tf", "label": label}
    return _astro_meta(row, rec)


def _astro_meta(row: SourceRow, rec: Record) -> Record:
    """Item type and the untranslated-Chinese flag, for English-only breakdowns."""
    if isinstance(row.data.get("type"), str):
        rec["type"] = row.data["type"]
    rec["has_untranslated_cjk"] = bool(row.data.get("has_untranslated_cjk", False))
    return rec


def load_mmlu_row(row: SourceRow) -> Record:
    """MMLU: four options as a list; the letter and the 0-based index must agree."""
    question = row.text("question")
    options = _options(row, 4)
    label = _mc_label(row, row.require("answer"), len(options))
    index = row.data.get("answer_index")
    if index is not None and index != LETTERS.index(label):
        raise row.error(f"answer_index {index!r} disagrees with answer '{label}'", "answer_index")
    rec = _mc_record(row, question, options, label)
    rec["subject"] = "astronomy"
    if isinstance(row.data.get("split"), str):
        rec["split"] = row.data["split"]
    return rec


def load_gsm8k_row(row: SourceRow) -> Record:
    """GSM8K: the reference solution (calculator markup removed) and its final number."""
    question, solution = row.text("question"), row.text("answer")
    if "####" not in solution:
        raise row.error("solution has no '#### <number>' final line", "answer")
    raw_final = solution.rpartition("####")[2].strip()
    final = raw_final.replace(",", "").replace("$", "").strip()
    if not _NUMBER.fullmatch(final):
        raise row.error(f"final answer '{raw_final}' is not a number", "answer")
    parsed = row.data.get("final_answer")
    if isinstance(parsed, int | float) and not isinstance(parsed, bool):
        if float(parsed) != float(final):
            raise row.error(f"{parsed} disagrees with '#### {raw_final}'", "final_answer")
    user = f"{question}\n{MATH_INSTRUCTION}"
    reference = _CALC_ANNOTATION.sub("", solution)
    return {"id": row.ident(), "messages": _chat(user, reference), "task": "math", "answer": final}


# --------------------------------------------------------------------------- registry

_SQUAD_CITE = (
    "SQuAD v1.1 (Rajpurkar et al. 2016), space/astronomy subset parsed from the explorer pages "
    "of https://github.com/rajpurkar/SQuAD-explorer (dev e0c66cf, train 13f82e3)"
)
_ASTRO_CITE = (
    "Astro-QA, ACMIS Lab, Scientific Data 2025 (https://doi.org/10.1038/s41597-025-04613-9), "
    "https://github.com/ACMISLab/Astro-QA commit 2b87acb, English part"
)
_ASTRO_SYSTEM = "You are an astronomy expert."

SUITES: dict[str, SuiteSpec] = {
    s.name: s
    for s in (
        SuiteSpec(
            name="squad_space",
            task="qa",
            paths=(
                "squad_v1.1_space/squad_space_core.jsonl",
                "squad_v1.1_space/squad_space_peripheral.jsonl",
            ),
            loader=load_squad_row,
            system_prompt="You answer questions about a passage with a short exact span from it.",
            max_new_tokens=32,
            citation=_SQUAD_CITE,
            license="CC BY-SA 4.0",
            metric="SQuAD exact match and token F1 (max over references)",
            description="space reading comprehension: passage + question -> answer span",
        ),
        SuiteSpec(
            name="astro_qa_mcq",
            task="mc",
            paths=("astro_qa_en/astro_qa_en_mcq.jsonl",),
            loader=load_astro_mcq_row,
            system_prompt=_ASTRO_SYSTEM + " Reply with the letter of the correct option only.",
            max_new_tokens=8,
            citation=_ASTRO_CITE,
            license="CC BY 4.0",
            metric="accuracy of the option letter",
            description="astronomy multiple choice (4 or 5 options, single answer)",
        ),
        SuiteSpec(
            name="astro_qa_tf",
            task="tf",
            paths=("astro_qa_en/astro_qa_en_true_false.jsonl",),
            loader=load_astro_tf_row,
            system_prompt=_ASTRO_SYSTEM + " Reply with True or False only.",
            max_new_tokens=8,
            citation=_ASTRO_CITE,
            license="CC BY 4.0",
            metric="accuracy of True/False",
            description="astronomy statements judged true or false",
        ),
        SuiteSpec(
            name="astro_qa_open",
            task="qa",
            paths=("astro_qa_en/astro_qa_en_open.jsonl",),
            loader=load_astro_open_row,
            system_prompt=_ASTRO_SYSTEM + " Answer accurately and concisely.",
            # References are paragraphs (median ~70 words, longest ~330): 32 tokens would cap
            # recall, so token F1 would measure the budget rather than the model.
            max_new_tokens=256,
            citation=_ASTRO_CITE,
            license="CC BY 4.0",
            metric="SQuAD token F1 against the reference answer (EM is near zero by design)",
            description="astronomy terminology and short-answer questions, free text",
        ),
        SuiteSpec(
            name="mmlu_astronomy",
            task="mc",
            paths=("mmlu_astronomy/mmlu_astronomy_test.jsonl",),
            loader=load_mmlu_row,
            system_prompt=_ASTRO_SYSTEM + " Reply with the letter of the correct option only.",
            max_new_tokens=8,
            citation=(
                "MMLU astronomy test (Hendrycks et al., ICLR 2021), third-party copy "
                "https://github.com/HaeChan0305/MLILAB-FedLLM commit d92730e"
            ),
            license="MIT",
            metric="accuracy of the option letter",
            description="MMLU astronomy, four-option multiple choice",
        ),
        SuiteSpec(
            name="gsm8k",
            task="math",
            paths=("gsm8k_test/gsm8k_test.jsonl",),
            loader=load_gsm8k_row,
            system_prompt=(
                "You are a careful math tutor. Reason step by step and finish with a line "
                "'#### <number>'."
            ),
            max_new_tokens=256,
            citation=(
                "GSM8K test (Cobbe et al. 2021, arXiv:2110.14168), "
                "https://github.com/openai/grade-school-math commit 3101c7d"
            ),
            license="MIT",
            metric="exact match of the final number after '####'",
            description="grade-school math word problems with step-by-step solutions",
        ),
    )
}


# --------------------------------------------------------------------------- loading


def get_suite(name: str) -> SuiteSpec:
    """The spec for ``name``; an unknown name lists the known ones."""
    if name not in SUITES:
        known = ", ".join(sorted(SUITES))
        raise SpecializeError(f"unknown suite '{name}' (known suites: {known})", field="suite")
    return SUITES[name]


def shared_data_dir(data_dir: str | Path | None = None) -> Path:
    """The shared data folder: the argument, else $SPECIALIZE_SHARED_DATA, else ../shared/data."""
    if data_dir is not None:
        return Path(data_dir)
    env = os.environ.get(ENV_VAR, "").strip()
    return Path(env) if env else DEFAULT_DATA_DIR


def load_suite(
    name: str,
    data_dir: Path | None = None,
    limit: int | None = None,
    seed: int = 0,
    system_prompt: str | None = None,
) -> list[Record]:
    """Evaluation records of one suite; skipped items are logged on the ``specialize`` logger.

    See :func:`load_suite_with_report` for the arguments.
    """
    records, _ = load_suite_with_report(name, data_dir, limit, seed, system_prompt)
    return records


def load_suite_with_report(
    name: str,
    data_dir: Path | None = None,
    limit: int | None = None,
    seed: int = 0,
    system_prompt: str | None = None,
) -> tuple[list[Record], dict[str, Any]]:
    """Records of suite ``name`` and a report ``{"skipped": {reason: count}, ...}``.

    ``limit`` keeps a deterministic sample: items are ranked by a hash of ``(seed, id)`` and the
    first ``limit`` kept, then returned in file order. Hashing rather than ``random`` makes the
    sample independent of Python's RNG and nested (the 20-item sample is inside the 50-item
    one), so growing an evaluation never reshuffles it. ``system_prompt=None`` uses the suite's
    default; ``""`` leaves the system message out. Skip counts cover the whole files, not only
    the sample, because they describe the dataset.
    """
    spec = get_suite(name)
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise SpecializeError(f"must be a positive integer or null, got {limit!r}", field="limit")
    root = shared_data_dir(data_dir)
    if not root.is_dir():
        raise SpecializeError(
            f"shared data folder not found: suite '{name}' needs the third-party data in "
            f"../shared/data (or set {ENV_VAR})",
            path=root,
        )
    records: list[Record] = []
    skipped: Counter[str] = Counter()
    seen: dict[str, str] = {}
    rows = 0
    for rel in spec.paths:
        path = root / rel
        if not path.is_file():
            raise SpecializeError(
                f"data file of suite '{name}' not found (expected under the shared data folder)",
                path=path,
            )
        for row in _rows(path):
            rows += 1
            try:
                rec = spec.loader(row)
            except _Skip as skip:
                skipped[skip.reason] += 1
                continue
            if rec["id"] in seen:
                raise row.error(f"duplicate id '{rec['id']}' (first at {seen[rec['id']]})", "id")
            seen[rec["id"]] = f"{path.name}:{row.line}"
            records.append(rec)
    if not records:
        raise SpecializeError(f"suite '{name}' has no usable records", path=root / spec.paths[0])
    total = len(records)
    if limit is not None and limit < total:
        records = _sample(records, limit, seed)
    system = spec.system_prompt if system_prompt is None else system_prompt
    if system:
        for rec in records:
            rec["messages"].insert(0, {"role": "system", "content": system})
    if skipped:
        reasons = ", ".join(f"{reason}: {n}" for reason, n in sorted(skipped.items()))
        log.info(
            "suite %s: skipped %d of %d items (%s)", name, sum(skipped.values()), rows, reasons
        )
    report = {
        "suite": name,
        "task": spec.task,
        "data_dir": str(root),
        "rows": rows,
        "usable": total,
        "returned": len(records),
        "skipped": dict(sorted(skipped.items())),
        "limit": limit,
        "seed": seed,
    }
    return records, report


def _sample(records: list[Record], limit: int, seed: int) -> list[Record]:
    def rank(rec: Record) -> str:
        return hashlib.sha256(f"{seed}\0{rec['id']}".encode()).hexdigest()

    chosen = {r["id"] for r in sorted(records, key=rank)[:limit]}
    return [r for r in records if r["id"] in chosen]


def _rows(path: Path) -> Iterator[SourceRow]:
    """Non-blank JSONL lines as objects; decoding is per line so errors carry a line number."""
    with path.open("rb") as f:
        for n, raw in enumerate(f, 1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise SpecializeError("not UTF-8 text", path=path, line=n) from None
            if not text.strip():
                continue
            try:
                data = json.loads(text)
            except json.JSONDecodeError as e:
                raise SpecializeError(f"not valid JSON ({e.msg})", path=path, line=n) from None
            if not isinstance(data, dict):
                raise SpecializeError("a record must be a JSON object", path=path, line=n)
            yield SourceRow(path, n, data)
