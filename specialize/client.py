"""The typed task API in Python: ``Tasks(url_or_run_dir).extract_bullets(passage)``.

One method per task of the run's catalog, each returning the task's validated type
(``list[str]``, ``list[QAPair]``, ``list[Triplet]``, ``RetrievalResult``, ``str``), in process
(a run directory: its base model and adapter are loaded here) or over HTTP (the URL of a
``specialize serve``). Both ways go through :func:`specialize.serve.task_api.task_request`
(the exact instruction the model was trained on, decoded under the task's schema) and
:func:`~specialize.serve.task_api.task_value` (validated into the type), so they return the
same objects. An answer that does not validate raises
:class:`~specialize.serve.task_api.TaskFailed`; an error is never a wrong object.

User tasks from YAML or Python have no method name of their own: call them with
``tasks.call("my_task", passage=...)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError

from specialize.data.tasks import Catalog, QAPair, RetrievalResult, Task, Triplet
from specialize.errors import SpecializeError
from specialize.infer.structured import generate_checked
from specialize.infer.types import Result
from specialize.serve.task_api import TaskFailed, TaskInputs, task_request, task_value

__all__ = ["QAPair", "RetrievalResult", "TaskFailed", "Tasks", "Triplet"]


class Tasks:
    """Typed calls of a served or saved specialist (see the module docstring).

    ``model`` picks the variant (default: the run's tuned model); ``max_tokens`` bounds each
    answer (the training answers fit in the teacher's budget; give at least that); an answer
    that does not validate is asked again up to ``retries`` times (sampled, seeded), then
    raises :class:`TaskFailed`."""

    def __init__(
        self,
        target: str | Path,
        *,
        model: str | None = None,
        api_key: str | None = None,
        max_tokens: int = 256,
        retries: int = 2,
        timeout_s: float = 300.0,
    ) -> None:
        self.max_tokens, self.retries = max_tokens, retries
        self._http: Any = None
        self._registry: Any = None
        text = str(target)
        if text.startswith(("http://", "https://")):
            self._open_http(text.rstrip("/"), model, api_key, timeout_s)
        else:
            self._open_local(Path(target), model)

    # ----------------------------------------------------------------------- opening
    def _open_http(self, url: str, model: str | None, key: str | None, timeout: float) -> None:
        import httpx

        base = url if url.endswith("/v1") else url + "/v1"
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._http = httpx.Client(base_url=base, headers=headers, timeout=timeout)
        listing = self._get("/tasks")["data"]
        if model is None:
            tuned = [m for m in listing if ":" not in m]
            if len(tuned) != 1:
                raise SpecializeError(f"the server has tasks for {sorted(listing)}: pass model=")
            model = tuned[0]
        if model not in listing:
            raise SpecializeError(f"the server has no task catalog for '{model}'")
        self.model, self.catalog = model, Catalog.from_json(listing[model])

    def _open_local(self, run: Path, model: str | None) -> None:
        from specialize.serve.registry import open_runs

        wants_gguf = model is not None and ":" in model and not model.endswith(":base")
        self._registry = open_runs([run], gguf=wants_gguf, max_context=None)  # GGUF only if named
        name = model or next(v.id for v in self._registry.variants.values() if v.kind == "tuned")
        variant = self._registry.get(name)
        if variant is None:
            raise SpecializeError(f"no model '{name}' in the run", path=run)
        if variant.catalog is None:
            raise SpecializeError("the run has no task catalog (tasks.json)", path=run)
        self.model, self.catalog, self._variant = name, variant.catalog, variant

    def _get(self, path: str) -> Any:
        r = self._http.get(path)
        _raise_for(r)
        return r.json()

    # ----------------------------------------------------------------------- calling
    def call(self, name: str, **inputs: Any) -> Any:
        """Task ``name`` on ``inputs`` (``passage=``, ``prefix=``, ``passage_a=``/``passage_b=``
        or ``question=``/``passages=``), answered as the task's type."""
        if name not in self.catalog:
            raise SpecializeError(f"no task '{name}' (tasks: {', '.join(self.catalog.names)})")
        task = self.catalog[name]
        try:
            args = TaskInputs.model_validate(inputs)
        except ValidationError as err:
            first = err.errors()[0]
            where = ".".join(str(x) for x in first.get("loc", ()))
            raise SpecializeError(f"task {name}: {where}: {first['msg']}", field=where) from None
        if self._http is not None:
            body = {"model": self.model, "input": args.model_dump(exclude_none=True),
                    "max_tokens": self.max_tokens, "retries": self.retries}  # fmt: skip
            r = self._http.post(f"/tasks/{name}", json=body)
            if r.status_code == 422:
                raise TaskFailed(name, _message(r))
            _raise_for(r)
            return task_value(task, Result(r.json()["text"], 0, "stop"))
        v = self._variant
        req = task_request(task, args, max_tokens=self.max_tokens, adapter=v.adapter)
        res = generate_checked(v.backend, [req], retries=self.retries, progress=False)[0]
        return task_value(task, res)

    def task(self, name: str) -> Task:
        return self.catalog[name]

    def extract_bullets(self, passage: str) -> list[str]:
        return self.call("bullets", passage=passage)

    def generate_qa_pairs(self, passage: str) -> list[QAPair]:
        return self.call("qa_pairs", passage=passage)

    def rephrase(self, passage: str) -> str:
        return self.call("rephrase", passage=passage)

    def continue_text(self, prefix: str) -> str:
        return self.call("continuation", prefix=prefix)

    def extract_triplets(self, passage: str) -> list[Triplet]:
        return self.call("triplets", passage=passage)

    def find_relevant(self, question: str, passages: list[str]) -> RetrievalResult:
        return self.call("retrieval", question=question, passages=passages)

    def compare(self, passage_a: str, passage_b: str) -> str:
        return self.call("comparison", passage_a=passage_a, passage_b=passage_b)

    # ---------------------------------------------------------------------- lifecycle
    def close(self) -> None:
        if self._http is not None:
            self._http.close()
        if self._registry is not None:
            self._registry.close()

    def __enter__(self) -> Tasks:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _message(r: Any) -> str:
    try:
        return str(r.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return r.text[:200]


def _raise_for(r: Any) -> None:
    if r.status_code >= 400:
        raise SpecializeError(f"HTTP {r.status_code}: {_message(r)}")
