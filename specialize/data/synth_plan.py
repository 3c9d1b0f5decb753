"""What the generator will ask: documents to splits, then (chunk, task) pairs, seeded.

Everything here is decided before a teacher answers anything, from hashes of ids and the
seed only, so a rerun plans exactly the same work (the cache can then answer all of it) and
adding a document does not reshuffle the others.

Splits are made **by document, before generation**: every record made from a document, and
every passage shown beside it (a comparison's second passage, a retrieval question's
distractors), comes from documents of the same split. Nothing generated from one document
can land in two splits, which a split of the finished records could not promise.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from specialize.config import SynthConfig
from specialize.data.chunk import Chunk
from specialize.data.documents import Document
from specialize.data.split import split_hash
from specialize.data.tasks import Catalog, Task, TaskInput

MIN_PREFIX_WORDS = 12  # a continuation needs a prefix and a continuation of a few sentences


@dataclass(frozen=True)
class Planned:
    """One record to make: a task on an input, in a split. ``id`` is the record id."""

    id: str
    task: Task
    inp: TaskInput
    split: str

    @property
    def source_doc(self) -> str:
        return self.inp.chunks[self._main].doc_id

    @property
    def chunk(self) -> Chunk:
        """The chunk the record is about (a retrieval record: the one its question came from)."""
        return self.inp.chunks[self._main]

    @property
    def _main(self) -> int:
        return self.inp.target if self.inp.target is not None else 0


@dataclass
class Plan:
    """The planned records, the documents' splits, and what could not be planned (counted)."""

    items: list[Planned]
    doc_splits: dict[str, str]
    unplannable: dict[str, dict[str, int]]  # task -> reason -> count


def split_documents(docs: Sequence[Document], synth: SynthConfig) -> dict[str, str]:
    """Documents ranked by a seeded hash of their id: the first ``test`` share (at least one
    when the share is above zero and there are three or more documents) go to test, the
    next ``validation`` share to validation, the rest to train."""
    ranked = sorted(docs, key=lambda d: split_hash(synth.seed, f"doc:{d.id}"))
    n = len(ranked)

    def count(share: float) -> int:
        return max(1, round(n * share)) if share > 0 and n >= 3 else round(n * share)

    n_test, n_val = count(synth.test), count(synth.validation)
    out: dict[str, str] = {}
    for i, d in enumerate(ranked):
        out[d.id] = "test" if i < n_test else "validation" if i < n_test + n_val else "train"
    return out


def plan(
    chunks: Sequence[Chunk], catalog: Catalog, synth: SynthConfig, splits: dict[str, str]
) -> Plan:
    """Each chunk goes through each task with the task's probability (seeded per chunk and
    task); multi-passage tasks get partners from other documents of the same split."""
    by_split: dict[str, list[Chunk]] = {}
    for c in chunks:
        by_split.setdefault(splits[c.doc_id], []).append(c)
    items: list[Planned] = []
    missing: dict[str, dict[str, int]] = {}
    for c in chunks:
        split = splits[c.doc_id]
        for task in catalog:
            if split_hash(synth.seed, f"task:{task.name}:{c.id}") >= task.probability:
                continue
            inp, why = _input(task, c, by_split[split], synth)
            if inp is None:
                reasons = missing.setdefault(task.name, {})
                reasons[why] = reasons.get(why, 0) + 1
                continue
            items.append(Planned(_record_id(task, inp), task, inp, split))
    return Plan(items, splits, missing)


def _input(
    task: Task, chunk: Chunk, pool: Sequence[Chunk], synth: SynthConfig
) -> tuple[TaskInput | None, str]:
    """The task's input built around ``chunk``, or None and why not."""
    kind = task.input_kind
    if kind == "chunk":
        return TaskInput((chunk,)), ""
    if kind == "prefix":
        cut = prefix_cut(chunk.text)
        if cut is None:
            return None, "chunk too short to continue"
        return TaskInput(
            (chunk,), prefix=chunk.text[:cut].rstrip(), continuation=chunk.text[cut:].strip()
        ), ""
    others = _partners(chunk, pool, synth.seed, task.name)
    if kind == "pair":
        if not others:
            return None, "no other document in the split"
        return TaskInput((chunk, others[0])), ""
    k = synth.passages - 1
    if len(others) < k:
        return None, f"fewer than {synth.passages} documents in the split"
    target = int(split_hash(synth.seed, f"target:{task.name}:{chunk.id}") * synth.passages)
    passages = list(others[:k])
    passages.insert(target, chunk)
    return TaskInput(tuple(passages), target=target), ""


def _partners(chunk: Chunk, pool: Sequence[Chunk], seed: int, task: str) -> list[Chunk]:
    """Chunks of other documents, one per document, in a seeded order for this chunk."""
    first: dict[str, Chunk] = {}
    ranked = sorted(pool, key=lambda c: split_hash(seed, f"partner:{task}:{chunk.id}:{c.id}"))
    for c in ranked:
        if c.doc_id != chunk.doc_id and c.doc_id not in first:
            first[c.doc_id] = c
    return list(first.values())


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def prefix_cut(text: str) -> int | None:
    """Where a continuation starts: the sentence boundary nearest the middle of ``text``
    (by characters), with at least ``MIN_PREFIX_WORDS`` words on each side; else the word
    boundary at the middle; None for a text too short to split."""
    words = text.split()
    if len(words) < 2 * MIN_PREFIX_WORDS:
        return None
    mid = len(text) // 2
    best: int | None = None
    for m in _SENTENCE_END.finditer(text):
        left, right = text[: m.start()], text[m.end() :]
        if len(left.split()) < MIN_PREFIX_WORDS or len(right.split()) < MIN_PREFIX_WORDS:
            continue
        if best is None or abs(m.end() - mid) < abs(best - mid):
            best = m.end()
    if best is not None:
        return best
    space = text.rfind(" ", 0, mid)
    return space + 1 if space > 0 else None


def _record_id(task: Task, inp: TaskInput) -> str:
    if task.input_kind == "question_passages":
        return f"{task.name}:{inp.chunks[inp.target or 0].id}"
    return f"{task.name}:" + "+".join(c.id for c in inp.chunks)
