"""Synthetic instruction data from documents: chunks x tasks -> a teacher -> checked records.

The ML-paper seed's recipe, made loud, resumable and schema-valid:

1. documents are read and chunked with provenance (:mod:`~specialize.data.documents`,
   :mod:`~specialize.data.chunk`), split by document (:mod:`~specialize.data.synth_plan`);
2. each chunk goes through each task of the catalog (:mod:`~specialize.data.tasks`) with the
   task's probability; the teacher (any :class:`~specialize.infer.types.Backend`: the bundled
   model on the continuous-batching engine, a GGUF through llama.cpp, vLLM over HTTP) answers
   every structured task **under its JSON schema**, through
   :func:`~specialize.infer.structured.generate_checked`: an answer that still fails validation
   is asked again with sampling, then counted by reason and left out, never kept;
3. every answer is cached the moment it arrives (:mod:`~specialize.data.teacher_cache`): a rerun
   asks nothing twice and rebuilds the identical dataset;
4. a teacher that stops answering stops the run with one line (exit 2) after the wave in
   flight, keeping every answer it gave;
5. quality filters (grounding, retrieval index, length, refusals, copies, exact and near
   duplicates) remove records, each counted by task and filter in ``synth_stats.json``.

Files written to ``out_dir`` (each atomically, after generation finished): ``dataset.jsonl``
(chat records with ``task``, ``source_doc``, ``chunk``, ``span``, ``split``), ``synth_stats.json``,
``synth_samples.jsonl`` (kept and removed records per task, for the report and the card) and
``tasks.json`` (the catalog: the exact instructions and schemas later stages must use).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from specialize.config import SynthConfig
from specialize.data.chunk import Chunk, chunk_documents
from specialize.data.documents import CorpusStats, Document, read_corpus
from specialize.data.filters import Deduper
from specialize.data.read import Record
from specialize.data.synth_plan import Plan, Planned, plan, split_documents
from specialize.data.tasks import QUESTION, Catalog, Task, TaskInput, load_catalog
from specialize.data.teacher_cache import (
    ReplayingTeacher,
    TeacherCache,
    TeacherSettings,
    cache_key,
)
from specialize.errors import SpecializeError
from specialize.infer.structured import generate_checked, reason_key
from specialize.infer.types import Backend, Request, Result, Sampling, checked
from specialize.io import write_json, write_jsonl

log = logging.getLogger("specialize")

WAVE = 256  # requests per teacher call: the longest a dead teacher can keep the run going
SAMPLES_PER_TASK = 3


@dataclass
class Sources:
    """The documents, their chunks and the task catalog: everything checked before any model
    loads (bad files, bad schemas, unknown tasks stop the run here)."""

    documents: list[Document]
    corpus: CorpusStats
    chunks: list[Chunk]
    catalog: Catalog
    path: Path


@dataclass
class SynthOutput:
    """What a generation produced: the kept records (with ``split``), the stats file's content,
    sample records (kept and removed) and the catalog used."""

    records: list[Record]
    stats: dict[str, Any]
    samples: list[dict[str, Any]]
    catalog: Catalog
    out_dir: Path


def read_sources(synth: SynthConfig, base_dir: Path, tokenizer: Any = None) -> Sources:
    """Documents, chunks and catalog; ``tokenizer`` is needed for ``chunk.unit: tokens``."""
    path = Path(synth.documents)
    path = path if path.is_absolute() else base_dir / path
    catalog = load_catalog(synth, base_dir)
    docs, corpus = read_corpus(
        path,
        text_fields=synth.text_fields,
        id_field=synth.id_field,
        on_bad_file=synth.on_bad_file,
        max_documents=synth.max_documents,
    )
    ch = synth.chunk
    if ch.unit == "tokens" and tokenizer is None:
        raise SpecializeError(
            "chunk.unit tokens needs the model's tokenizer", field="synth.chunk.unit"
        )
    chunks = chunk_documents(
        docs, size=ch.size, overlap=ch.overlap, unit=ch.unit, tokenizer=tokenizer, snap=ch.snap
    )
    return Sources(docs, corpus, chunks, catalog, path)


def generate_dataset(
    synth: SynthConfig,
    base_dir: Path,
    teacher: Backend,
    out_dir: Path,
    *,
    tokenizer: Any = None,
    teacher_name: str | None = None,
    progress: bool = True,
    sources: Sources | None = None,
    cached_only: bool = False,
) -> SynthOutput:
    """Generate, filter and write the dataset (see the module docstring).

    ``cached_only`` (every process of a multi-process run) refuses to call the teacher: the
    answers must all be in the cache already, from ``specialize data generate``."""
    start = time.perf_counter()
    src = sources or read_sources(synth, base_dir, tokenizer)
    the_plan = plan(src.chunks, src.catalog, synth, split_documents(src.documents, synth))
    settings = TeacherSettings(
        teacher_name or teacher.name, synth.max_new_tokens, synth.temperature, synth.retries
    )
    asker = _Asker(
        teacher, TeacherCache(out_dir / "cache" / "teacher.jsonl"), settings, synth, progress
    )
    asker.cached_only = cached_only
    try:
        answers = asker.answer_plan(the_plan)
    finally:
        asker.cache.close()
    records, samples, tally = _assemble(the_plan, answers, synth, settings.teacher)
    stats = _stats(src, synth, settings, the_plan, tally, asker, records)
    stats["wall_s"] = round(time.perf_counter() - start, 2)
    out = SynthOutput(records, stats, samples, src.catalog, out_dir)
    write_outputs(out)
    return out


def write_outputs(out: SynthOutput) -> None:
    """The dataset, stats, samples and catalog, each written atomically."""
    write_jsonl(out.out_dir / "dataset.jsonl", out.records)
    write_jsonl(out.out_dir / "synth_samples.jsonl", out.samples)
    write_json(out.out_dir / "tasks.json", out.catalog.to_json())
    write_json(out.out_dir / "synth_stats.json", out.stats)


# ------------------------------------------------------------------------- teacher calls


_Job = tuple[Task, Task, TaskInput]  # (task counted under, task asked, input)


@dataclass
class _Answer:
    """A planned record's teacher answer (None for tasks without teacher), and its question's."""

    result: Result | None
    question: Result | None = None


class _Asker:
    """Sends requests to the teacher in waves, through the cache, and tallies per task."""

    def __init__(
        self,
        teacher: Backend,
        cache: TeacherCache,
        settings: TeacherSettings,
        synth: SynthConfig,
        progress: bool,
    ) -> None:
        # every call cached as it arrives, so a rerun after a kill asks nothing twice
        self.teacher: Backend = ReplayingTeacher(teacher, cache, settings)  # type: ignore[assignment]
        self.cache, self.settings = cache, settings
        self.synth, self.progress = synth, progress
        self.calls: dict[str, dict[str, Any]] = {}
        self.fallbacks = 0
        self.cached_only = False

    def answer_plan(self, the_plan: Plan) -> dict[str, _Answer]:
        """Every single-input task, and each retrieval record as a chain of two stages: the
        teacher writes a question about the chunk, then answers it over the passages. The
        second stage is asked as soon as its question is in (in the same running batch)."""
        first = [
            p
            for p in the_plan.items
            if p.task.needs_teacher and p.task.input_kind != "question_passages"
        ]
        retrieval = [p for p in the_plan.items if p.task.input_kind == "question_passages"]
        jobs = [(p.task, p.task, p.inp) for p in first]
        jobs += [(p.task, QUESTION, TaskInput((p.chunk,))) for p in retrieval]
        questions: dict[int, Result] = {}

        def then(i: int, res: Result) -> _Job | None:
            if i < len(first) or i in questions:
                return None  # a single-stage task, or the retrieval answer itself
            questions[i] = res
            if not res.ok or res.value is None:
                return None
            p = retrieval[i - len(first)]
            return (p.task, p.task, replace(p.inp, question=res.value.question))

        results = self.ask(jobs, "teacher", then)
        answers = {p.id: _Answer(r) for p, r in zip(first, results[: len(first)], strict=True)}
        for k, p in enumerate(retrieval):
            r = results[len(first) + k]
            q = questions.get(len(first) + k, r)
            answers[p.id] = _Answer(r if r is not q else None, q)
        for p in the_plan.items:
            answers.setdefault(p.id, _Answer(None))
        return answers

    def ask(
        self,
        jobs: Sequence[_Job],
        desc: str,
        then: Callable[[int, Result], _Job | None] | None = None,
    ) -> list[Result]:
        """The final answer of each job's chain: cached, else from the teacher. A job is
        (task counted under, task asked, input); ``then(i, answer)`` may give a next job."""
        chains = _Chains(self, list(jobs), then)
        out: list[Result | None] = [None] * len(jobs)
        todo: list[int] = []
        for i, job in enumerate(jobs):
            got = chains.advance(i, job)
            if isinstance(got, Result):
                out[i] = got
            else:
                todo.append(i)
        if todo and self.cached_only:
            raise SpecializeError(
                f"{len(todo)} teacher answers are not cached, and a multi-process run does not "
                "call the teacher: run `specialize data generate CONFIG` first",
                field="synth.teacher",
            )
        for w in range(0, len(todo), WAVE):
            wave = todo[w : w + WAVE]
            label = desc if len(todo) <= WAVE else f"{desc} {w // WAVE + 1}/{-(-len(todo) // WAVE)}"
            for i, res in zip(wave, self._call(wave, chains, label), strict=True):
                out[i] = res
        return [r for r in out if r is not None]

    def _call(self, wave: list[int], chains: _Chains, desc: str) -> list[Result]:
        before = getattr(self.teacher, "fallbacks", 0)
        try:
            results = generate_checked(
                self.teacher, [chains.requests[i] for i in wave], retries=self.synth.retries,
                progress=self.progress, desc=desc, then=lambda k, res: chains.done(wave[k], res),
            )  # fmt: skip
        except SpecializeError as e:
            raise self._stopped(e.message) from None
        self.fallbacks += getattr(self.teacher, "fallbacks", 0) - before
        failed = [r for r in results if r.error is not None]
        if failed:
            raise self._stopped(failed[0].error or "no answer")
        return results

    def _stopped(self, why: str) -> SpecializeError:
        n = len(self.cache.answers)
        return SpecializeError(
            f"teacher {self.settings.teacher} stopped answering ({why}); the {n} answers it "
            f"gave are kept in {self.cache.path}: rerun the same command to go on from there",
            field="synth.teacher",
        )

    def _request(self, task: Task, inp: TaskInput) -> Request:
        s = self.synth
        return Request(
            messages=task.teacher_messages(inp),
            max_new_tokens=s.max_new_tokens,
            sampling=Sampling(temperature=s.temperature, seed=s.seed),
            constraint=task.constraint(),
        )

    def _tally(self, task: str, key: str, n: int) -> None:
        row = self.calls.setdefault(task, {"teacher_calls": 0, "cached": 0, "retries": 0})
        row[key] = row.get(key, 0) + n


class _Chains:
    """The current stage of each job's chain: its request and cache key; moves a chain on
    through cached stages without calling the teacher, and caches each answer it gets."""

    def __init__(
        self, asker: _Asker, jobs: list[_Job], then: Callable[[int, Result], _Job | None] | None
    ) -> None:
        self.asker, self.then = asker, then
        self.jobs = jobs
        self.requests: list[Request | None] = [None] * len(jobs)
        self.keys = [""] * len(jobs)

    def advance(self, i: int, job: _Job) -> Request | Result:
        """The request chain ``i`` must send next, or its final answer if all was cached."""
        a = self.asker
        while True:
            self.jobs[i] = job
            req = a._request(job[1], job[2])
            self.requests[i], self.keys[i] = req, cache_key(a.settings, job[1].fingerprint(), req)
            hit = a.cache.get(self.keys[i])
            if hit is None:
                return req
            res = checked(hit, req)
            a._tally(job[0].name, "cached", 1)
            nxt = self.then(i, res) if self.then is not None else None
            if nxt is None:
                return res
            job = nxt

    def done(self, i: int, res: Result) -> Request | Result | None:
        """A stage's answer from the teacher: cached, counted, and the chain's next stage."""
        counted, asked, _ = self.jobs[i]
        a = self.asker
        a.cache.put(self.keys[i], asked.name, res)
        a._tally(counted.name, "teacher_calls", res.attempts)
        a._tally(counted.name, "retries", res.attempts - 1)
        nxt = self.then(i, res) if self.then is not None else None
        return None if nxt is None else self.advance(i, nxt)


# -------------------------------------------------------------------------- records


@dataclass
class _Tally:
    """Per task: planned, valid, invalid (by reason), removed (by filter), kept."""

    rows: dict[str, dict[str, Any]]

    def row(self, task: str) -> dict[str, Any]:
        return self.rows.setdefault(
            task,
            {
                "planned": 0,
                "valid": 0,
                "invalid": 0,
                "invalid_reasons": {},
                "removed": {},
                "repaired": 0,
                "kept": 0,
            },
        )

    def bump(self, task: str, key: str, sub: str | None = None) -> None:
        row = self.row(task)
        if sub is None:
            row[key] += 1
        else:
            row[key][sub] = row[key].get(sub, 0) + 1


def _assemble(
    the_plan: Plan, answers: dict[str, _Answer], synth: SynthConfig, teacher: str
) -> tuple[list[Record], list[dict[str, Any]], _Tally]:
    """Records in plan order: valid answers that pass their task's checks and the dedupe."""
    tally = _Tally({})
    dedupers: dict[str, Deduper] = {}
    records: list[Record] = []
    samples: list[dict[str, Any]] = []
    shown: dict[tuple[str, bool], int] = {}
    for p in the_plan.items:
        name = p.task.name
        tally.bump(name, "planned")
        value, inp, reason = _value(p, answers[p.id], tally)
        if value is None:
            continue
        value, dropped = p.task.repair(value)
        if dropped:
            tally.bump(name, "repaired")
        reason = reason or p.task.check(value, inp, synth.filters)
        user, assistant = p.task.user_message(inp), p.task.render(value)
        if reason is None:
            dedupe = dedupers.setdefault(name, Deduper(synth.filters.near_duplicate))
            reason = dedupe.add(assistant)
        kept = reason is None
        if kept:
            tally.bump(name, "kept")
            records.append(_record(p, inp, user, assistant, teacher))
        else:
            tally.bump(name, "removed", reason)
        if shown.get((name, kept), 0) < SAMPLES_PER_TASK:
            shown[(name, kept)] = shown.get((name, kept), 0) + 1
            samples.append(
                {"task": name, "kept": kept, "reason": reason, "user": user,
                 "assistant": assistant, "source_doc": p.source_doc, "id": p.id}
            )  # fmt: skip
    return records, samples, tally


def _value(p: Planned, ans: _Answer, tally: _Tally) -> tuple[Any, TaskInput, str | None]:
    """The answer's checked value (None: counted as invalid or unanswered) and the input
    it answers (a retrieval input with its question filled in)."""
    name, inp = p.task.name, p.inp
    if not p.task.needs_teacher:
        tally.bump(name, "valid")
        return inp.continuation, inp, None
    if p.task.input_kind == "question_passages":
        q = ans.question
        if q is None or not q.ok:
            tally.bump(name, "invalid")
            why = q.invalid if q is not None and q.invalid else "no question"
            tally.bump(name, "invalid_reasons", "question: " + reason_key(why))
            return None, inp, None
        inp = replace(inp, question=q.value.question)
    r = ans.result
    if r is None or not r.ok:
        tally.bump(name, "invalid")
        tally.bump(
            name, "invalid_reasons", reason_key(r.invalid or "") if r is not None else "no answer"
        )
        return None, inp, None
    tally.bump(name, "valid")
    if p.task.structured:
        return r.value, inp, None
    text = r.text.strip()
    return (text, inp, None) if text else (text, inp, "empty")


def _record(p: Planned, inp: TaskInput, user: str, assistant: str, teacher: str) -> Record:
    c = p.chunk
    rec: Record = {
        "id": p.id,
        "messages": [
            {"role": "user", "content": user},
            {"role": "assistant", "content": assistant},
        ],
        "task": p.task.name,
        "source_doc": c.doc_id,
        "chunk": c.id,
        "span": [c.start, c.end],
        "split": p.split,
        "teacher": teacher if p.task.needs_teacher else "document",
    }
    if len(inp.chunks) > 1:
        rec["passages"] = [x.id for x in inp.chunks]
    if inp.target is not None:
        rec["target"] = inp.target
    return rec


def _stats(
    src: Sources,
    synth: SynthConfig,
    settings: TeacherSettings,
    the_plan: Plan,
    tally: _Tally,
    asker: _Asker,
    records: list[Record],
) -> dict[str, Any]:
    """``synth_stats.json``: what each task planned, asked, got, removed and kept."""
    tasks: dict[str, Any] = {}
    for task in src.catalog:
        row = tally.row(task.name) | asker.calls.get(
            task.name, {"teacher_calls": 0, "cached": 0, "retries": 0}
        )
        row["not_planned"] = the_plan.unplannable.get(task.name, {})
        row["splits"] = {
            s: sum(1 for r in records if r["task"] == task.name and r["split"] == s)
            for s in ("train", "validation", "test")
        }
        tasks[task.name] = row
    removed: dict[str, int] = {}
    for row in tasks.values():
        for k, v in row["removed"].items():
            removed[k] = removed.get(k, 0) + v
    docs_by_split = {
        s: sum(1 for v in the_plan.doc_splits.values() if v == s)
        for s in ("train", "validation", "test")
    }
    return {
        "documents": {
            "path": str(src.path),
            "documents": len(src.documents),
            "chunks": len(src.chunks),
        }
        | src.corpus.as_dict(),
        "chunking": synth.chunk.model_dump(mode="json"),
        "teacher": settings.teacher,
        "generation": settings.as_dict(),
        "seed": synth.seed,
        "tasks": tasks,
        "totals": {
            "planned": sum(r["planned"] for r in tasks.values()),
            "teacher_calls": sum(r["teacher_calls"] for r in tasks.values()),
            "cached": sum(r["cached"] for r in tasks.values()),
            "retries": sum(r["retries"] for r in tasks.values()),
            "valid": sum(r["valid"] for r in tasks.values()),
            "invalid": sum(r["invalid"] for r in tasks.values()),
            "removed": removed,
            "repaired": sum(r["repaired"] for r in tasks.values()),
            "kept": len(records),
            "schema_fallbacks": asker.fallbacks,
        },
        "splits": {
            "documents": docs_by_split,
            "records": {
                s: sum(1 for r in records if r["split"] == s)
                for s in ("train", "validation", "test")
            },
        },
    }
