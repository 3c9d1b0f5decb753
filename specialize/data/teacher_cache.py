"""Every teacher answer, kept on disk the moment it arrives.

A generation run can be hours of teacher calls; users of today's tools report runs that could
not resume. Each finished answer is appended to ``cache/teacher.jsonl`` (flushed and
fsynced) under a key that hashes everything that decides it: the teacher, the generation
settings, the task's fingerprint (instruction, schema, version) and the exact messages (so the
chunk text). A rerun after a crash or SIGKILL asks only what has no line yet, so no call is
made twice, and rebuilds the identical dataset from the same answers.

A line cut off by a kill mid-write is the last line of the file; it is dropped (and its
request asked again), never trusted. Answers that failed (``error``) are not cached: they are
the teacher's failure, not its answer.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from specialize.errors import SpecializeError
from specialize.infer.types import Request, Result, checked


@dataclass(frozen=True)
class TeacherSettings:
    """What, besides the request itself, decides a teacher's answer."""

    teacher: str
    max_new_tokens: int
    temperature: float
    retries: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "teacher": self.teacher,
            "max_new_tokens": self.max_new_tokens,
            "temperature": self.temperature,
            "retries": self.retries,
        }


def cache_key(settings: TeacherSettings, task_fingerprint: str, request: Request) -> str:
    """sha256 of (teacher, generation settings, task fingerprint, messages, constraint)."""
    c = request.constraint
    payload = {
        "settings": settings.as_dict(),
        "task": task_fingerprint,
        "messages": request.messages,
        "constraint": None if c is None else [c.kind, c.schema, c.pattern, list(c.choices)],
        "seed": request.sampling.seed,
    }
    blob = json.dumps(payload, sort_keys=True, ensure_ascii=False).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()


class TeacherCache:
    """Answers by key, loaded from and appended to one JSONL file (thread-safe appends)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.answers: dict[str, dict[str, Any]] = {}
        self.dropped_partial = 0
        self._lock = threading.Lock()
        if path.is_file():
            self._load()
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = path.open("a", encoding="utf-8")

    def _load(self) -> None:
        lines = self.path.read_text(encoding="utf-8", errors="replace").split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        for n, line in enumerate(lines, 1):
            try:
                row = json.loads(line)
                self.answers[row["key"]] = row
            except (ValueError, KeyError, TypeError):
                if n == len(lines):  # cut off by a kill mid-write: ask again
                    self.dropped_partial += 1
                    continue
                raise SpecializeError(
                    "damaged cache line (not one written by specialize); delete the cache "
                    "folder to start over",
                    path=self.path,
                    line=n,
                ) from None
        if self.dropped_partial:  # rewrite without the partial line so appends stay whole
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(
                "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in self.answers.values()),
                encoding="utf-8",
            )
            os.replace(tmp, self.path)

    def get(self, key: str) -> Result | None:
        row = self.answers.get(key)
        if row is None:
            return None
        return Result(
            text=row["text"],
            new_tokens=row["new_tokens"],
            finish_reason=row["finish_reason"],
            invalid=row.get("invalid"),
            attempts=row.get("attempts", 1),
        )

    def put(self, key: str, task: str, result: Result) -> None:
        """Append one answer (not failed ones) and make it durable before returning."""
        if result.error is not None:
            return
        row = {
            "key": key,
            "task": task,
            "text": result.text,
            "new_tokens": result.new_tokens,
            "finish_reason": result.finish_reason,
            "invalid": result.invalid,
            "attempts": result.attempts,
        }
        line = json.dumps(row, ensure_ascii=False) + "\n"
        with self._lock:
            self._file.write(line)
            self._file.flush()
            os.fsync(self._file.fileno())
            self.answers[key] = row

    def close(self) -> None:
        self._file.close()


ATTEMPT = "attempt"  # the task-fingerprint slot of an attempt's key: every call, by its request


class ReplayingTeacher:
    """The teacher behind the cache, call by call: every answer it gives (a first attempt, a
    retry, a second stage) is cached under its own request the moment it arrives, and a request
    already answered is replayed from the cache instead of being asked again.

    Why on top of the per-record cache: that one holds a record's *final* answer, so a run
    killed while a record was being retried would ask its earlier attempts again on the rerun.
    Retries are deterministic requests (seeded), so replaying them gives the rerun the same
    chain, the same answers and the identical dataset without a call made twice."""

    def __init__(self, teacher: Any, cache: TeacherCache, settings: TeacherSettings) -> None:
        self.teacher, self.cache, self.settings = teacher, cache, settings
        self.name = teacher.name
        if hasattr(teacher, "generate_chains"):
            self.generate_chains = self._chains

    @property
    def fallbacks(self) -> int:
        return getattr(self.teacher, "fallbacks", 0)

    def _key(self, req: Request) -> str:
        return cache_key(self.settings, ATTEMPT, req)

    def _replayed(self, req: Request) -> Result | None:
        hit = self.cache.get(self._key(req))
        return None if hit is None else checked(hit, req)

    def generate(self, requests: Any, *, progress: bool = True, desc: str = "generate",
                 on_result: Any = None) -> list[Result]:  # fmt: skip
        out: list[Result | None] = [None] * len(requests)
        todo = []
        for i, req in enumerate(requests):
            hit = self._replayed(req)
            if hit is None:
                todo.append(i)
                continue
            out[i] = hit
            if on_result is not None:
                on_result(i, hit)

        def fin(k: int, res: Result) -> None:
            i = todo[k]
            self.cache.put(self._key(requests[i]), ATTEMPT, res)
            out[i] = res
            if on_result is not None:
                on_result(i, res)

        if todo:
            self.teacher.generate(
                [requests[i] for i in todo], progress=progress, desc=desc, on_result=fin
            )
        return [r for r in out if r is not None]

    def _chains(self, requests: Any, step: Any, *, progress: bool = True,
                desc: str = "generate") -> None:  # fmt: skip
        sent: dict[int, Request] = {}

        def through_cache(i: int, nxt: Request | None) -> Request | None:
            while nxt is not None and (hit := self._replayed(nxt)) is not None:
                nxt = step(i, hit)
            if nxt is not None:
                sent[i] = nxt
            return nxt

        live = [i for i, req in enumerate(requests) if through_cache(i, req) is not None]

        def on_answer(k: int, res: Result) -> Request | None:
            i = live[k]
            self.cache.put(self._key(sent[i]), ATTEMPT, res)
            return through_cache(i, step(i, res))

        if live:
            self.teacher.generate_chains(
                [sent[i] for i in live], on_answer, progress=progress, desc=desc
            )

    def close(self) -> None:
        self.teacher.close()
