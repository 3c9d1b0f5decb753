"""Evaluation as one stage: variants answer the same records; one writer of ``eval/<variant>/``.

``specialize run`` (base, tuned), ``specialize eval`` (base, tuned, an endpoint, GGUF files,
suites, ablation conditions) and the GGUF stage of a run (``gguf-<type>``) all call
:func:`evaluate`. A :class:`Variant` is a name, the :class:`~specialize.infer.types.Backend`
that generates its answers and, for a model held in this process, the model itself (teacher-
forced loss and perplexity, log-likelihood of options). Generation always goes through the
backend protocol: a local model gets the continuous-batching engine
(:class:`~specialize.infer.hf.HFBackend`), a GGUF file llama.cpp, a server HTTP.

Rendering: each record is rendered once per evaluation with the run's chat format, and the
rendering is shared by every local variant of the call: the generation prompt's ids (passed to
the engine as ``Request(prompt_ids=...)``, so the engine does not render again) and the whole
conversation's ids for the teacher-forced loss. These are two different token sequences (a
template may put untrained tokens, an empty think block say, between the generation prompt
and the answer), so the loss does not reuse the prompt's ids; both are exactly what the
tokenizer gives at inference. Variants without a local model (GGUF, endpoints) get the
messages and render with their own template.

Files, written here and nowhere else: ``<out>/<variant>/predictions.jsonl`` and
``metrics.json`` (written after the predictions, so its presence means the variant is done;
``reuse`` reads finished variants back instead of evaluating them again), and, with
``partial_dir``, ``<partial_dir>/<variant>.partial.jsonl``: answers appended as they finish,
so an interrupted evaluation generates only what it had not answered.

Comparisons are not made here: a run evaluates base before training, tuned after it and the
GGUF files after export, so :func:`evaluate` returns each call's :class:`EvalResults` and the
caller adds them up and hands them to :mod:`specialize.evaluate.compare`.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal

from specialize.data.batches import Example, text_examples, to_examples
from specialize.data.read import Record
from specialize.evaluate.scoring import (
    Metrics,
    Prediction,
    add_bertscore,
    add_judge,
    check_records,
    document_losses,
    example_losses,
    loglik_choices,
    prediction_row,
    summarize,
    summarize_documents,
)
from specialize.infer.types import Backend, Request, Result
from specialize.io import read_json, read_jsonl, write_json, write_jsonl
from specialize.models.chat import render_prompt

if TYPE_CHECKING:
    from specialize.data.tasks import Catalog

log = logging.getLogger("specialize")


@dataclass(frozen=True)
class EvalSettings:
    """How records are evaluated, the same for every variant of a run or report.

    ``split`` is written into each ``metrics.json`` when set (a run's test or validation
    split). ``mode == "cpt"`` evaluates documents (``text``) by held-out perplexity, cut into
    chunks of ``max_seq_len`` tokens as in training, instead of answering questions.
    ``catalog`` (a run's synthetic-data task catalog) scores records of its tasks by their
    task: schema validity, field-level F1, retrieval index (``task_scores.py``)."""

    fmt: str = "chatml"
    max_new_tokens: int = 48
    batch_size: int = 16
    mode: Literal["sft", "cpt"] = "sft"
    max_seq_len: int = 512
    loglik: bool = True
    split: str | None = None
    breakdown_by: tuple[str, ...] = ()
    bootstrap: int = 2000
    seed: int = 0
    catalog: Catalog | None = None


@dataclass
class Variant:
    """One model answering the records.

    ``name`` names its folder (``eval/<name>/``). The answers come from ``backend`` (owned
    and closed by the caller), else from ``open_backend()`` (called only when answers are
    needed, closed right after: a GGUF file's llama.cpp child lives only while its variant is
    evaluated, and a reused variant starts none), else from a local ``model`` (with its
    ``tokenizer``) through the HF engine. A variant with a model also gets loss, perplexity
    and log-likelihood choices; one without (GGUF, endpoint) only the scores of its answers.
    """

    name: str
    backend: Backend | None = None
    model: Any = None
    tokenizer: Any = None
    open_backend: Callable[[], Backend] | None = None

    def __post_init__(self) -> None:
        if self.backend is None and self.open_backend is None and self.model is None:
            raise ValueError(f"variant '{self.name}' needs a backend or a local model")
        if self.model is not None and self.tokenizer is None:
            raise ValueError(f"variant '{self.name}': a local model needs its tokenizer")


@dataclass
class VariantResult:
    """One variant's predictions (rows of predictions.jsonl) and metrics (metrics.json)."""

    name: str
    predictions: list[Prediction]
    metrics: Metrics
    reused: bool = False


@dataclass
class EvalResults:
    """Evaluated variants in evaluation order (comparisons take the first as reference)."""

    variants: dict[str, VariantResult] = field(default_factory=dict)

    def __contains__(self, name: object) -> bool:
        return name in self.variants

    def __getitem__(self, name: str) -> VariantResult:
        return self.variants[name]

    def add(self, other: EvalResults) -> EvalResults:
        """These results followed by ``other``'s (a later stage's variants), in place."""
        self.variants.update(other.variants)
        return self

    def predictions(self, names: list[str] | None = None) -> dict[str, list[Prediction]]:
        return {n: self.variants[n].predictions for n in names or list(self.variants)}

    def metrics(self, names: list[str] | None = None) -> dict[str, Metrics]:
        return {n: self.variants[n].metrics for n in names or list(self.variants)}


def evaluate(
    variants: list[Variant],
    records: list[Record],
    settings: EvalSettings,
    out_dir: Path | None = None,
    *,
    reuse: bool = False,
    partial_dir: Path | None = None,
    scorer: Any = None,
    judge: Backend | None = None,
    progress: bool = True,
) -> EvalResults:
    """Every variant on ``records``, in order; each written to ``out_dir/<name>/`` when given.

    ``reuse`` (``specialize run --resume``) reads back a variant whose ``metrics.json`` an
    interrupted run finished. ``scorer`` adds BERTScore to open answers; ``judge`` (a backend)
    adds an LLM judge's scores.
    """
    results = EvalResults()
    inputs = _Inputs(records, settings)
    for variant in variants:
        done = _finished(out_dir, variant.name) if reuse and out_dir is not None else None
        if done is not None:
            log.info("%s evaluation reused from the interrupted run", variant.name)
            results.variants[variant.name] = done
            continue
        if settings.mode == "cpt":
            result = _evaluate_documents(variant, inputs, progress)
        else:
            partial = partial_dir / f"{variant.name}.partial.jsonl" if partial_dir else None
            result = _evaluate_answers(variant, inputs, partial, scorer, judge, progress)
        if out_dir is not None:
            _write_variant(out_dir, result, settings.split)
        results.variants[variant.name] = result
    return results


def _write_variant(out_dir: Path, result: VariantResult, split: str | None = None) -> None:
    """``<out_dir>/<name>/predictions.jsonl``, then ``metrics.json`` (its presence: done)."""
    folder = out_dir / result.name
    write_jsonl(folder / "predictions.jsonl", result.predictions)
    write_json(folder / "metrics.json", result.metrics | ({"split": split} if split else {}))


def _finished(out_dir: Path, name: str) -> VariantResult | None:
    done = out_dir / name / "metrics.json"
    if not done.is_file():
        return None
    preds = read_jsonl(out_dir / name / "predictions.jsonl")
    return VariantResult(name, preds, read_json(done), reused=True)


# ------------------------------------------------------------------------------ inputs


class _Inputs:
    """The records and their renderings, computed once per tokenizer and shared by variants."""

    def __init__(self, records: list[Record], settings: EvalSettings) -> None:
        self.records, self.settings = records, settings
        self._rendered: dict[int, tuple[Any, list[Example], list[list[int]]]] = {}
        if settings.mode == "sft":
            check_records(records, catalog=settings.catalog)

    def rendered(self, tokenizer: Any) -> tuple[list[Example], list[list[int]]]:
        """(loss examples, generation prompt ids) of every record, in record order."""
        key = id(tokenizer)
        if key not in self._rendered:
            s = self.settings
            if s.mode == "cpt":
                docs = [
                    (r["id"], tokenizer(r["text"], add_special_tokens=False)["input_ids"])
                    for r in self.records
                ]
                examples, prompts = text_examples(docs, tokenizer.eos_token_id, s.max_seq_len), []
            else:
                examples, _ = to_examples(self.records, tokenizer, s.fmt, max_len=10**9)
                prompts = [
                    render_prompt(r["messages"][:-1], tokenizer, s.fmt) for r in self.records
                ]
            self._rendered[key] = (tokenizer, examples, prompts)  # keeps the tokenizer alive
        _, examples, prompts = self._rendered[key]
        return examples, prompts


# ---------------------------------------------------------------------------- variants


def _evaluate_answers(
    variant: Variant,
    inputs: _Inputs,
    partial: Path | None,
    scorer: Any,
    judge: Backend | None,
    progress: bool,
) -> VariantResult:
    """Loss and option choices (local model), generated answers and their scores."""
    s, records, name = inputs.settings, inputs.records, variant.name
    t0 = time.perf_counter()
    losses: dict[str, tuple[float, int]] = {}
    picks: dict[str, str] = {}
    prompts: list[list[int]] | None = None
    if variant.model is not None:
        model, tok = variant.model, variant.tokenizer
        examples, prompts = inputs.rendered(tok)
        bar = (lambda what: f"{what} {name}") if progress else (lambda what: None)
        losses = example_losses(model, examples, tok.pad_token_id, s.batch_size, bar("loss"))
        if s.loglik:
            picks = loglik_choices(model, tok, records, s.fmt, s.batch_size, bar("options"))
    t_loss = time.perf_counter() - t0
    t_gen = time.perf_counter()
    answers = _answers(variant, inputs, prompts, partial, progress)
    gen_s = time.perf_counter() - t_gen

    preds = [
        prediction_row(rec, ans, picks.get(rec["id"]), losses.get(rec["id"]), s.catalog)
        for rec, ans in zip(records, answers, strict=True)
    ]
    add_bertscore(scorer, records, preds, s.catalog)
    judged = add_judge(judge, records, preds, progress) if judge is not None else None
    metrics = summarize(preds, name)
    metrics |= {
        "wall_s": time.perf_counter() - t0,
        "loss_wall_s": t_loss,
        "generate_wall_s": gen_s,
        "records_per_s": len(preds) / gen_s if gen_s > 0 else math.nan,
    }
    if judged is not None:
        metrics["judge"] = judged
    _log_variant(name, metrics)
    return VariantResult(name, preds, metrics)


def _evaluate_documents(variant: Variant, inputs: _Inputs, progress: bool) -> VariantResult:
    """Held-out perplexity of raw documents: per-document loss over all of its tokens."""
    if variant.model is None:
        raise ValueError(f"variant '{variant.name}': document perplexity needs a local model")
    t0 = time.perf_counter()
    tok = variant.tokenizer
    examples, _ = inputs.rendered(tok)
    preds = document_losses(
        variant.model, examples, tok.pad_token_id, inputs.settings.batch_size,
        f"perplexity {variant.name}",
    )  # fmt: skip
    metrics = summarize_documents(preds, variant.name) | {"wall_s": time.perf_counter() - t0}
    _log_variant(variant.name, metrics)
    return VariantResult(variant.name, preds, metrics)


def _log_variant(name: str, m: Metrics) -> None:
    parts = [f"{k} {m[k]:.4f}" for k in ("exact_match", "f1", "accuracy", "perplexity") if k in m]
    log.info("%s: %d records, %s", name, m["n"], ", ".join(parts))


# ---------------------------------------------------------------------------- answers


def _answers(
    variant: Variant,
    inputs: _Inputs,
    prompts: list[list[int]] | None,
    partial: Path | None,
    progress: bool,
) -> list[dict[str, Any]]:
    """Answers for every record, reusing finished ones from ``partial`` and appending to it."""
    records, s = inputs.records, inputs.settings
    ids = [r["id"] for r in records]
    done = _load_partial(partial, set(ids))
    todo = [i for i, rid in enumerate(ids) if rid not in done]
    if done:
        log.info("%s: %d of %d answers reused from %s", variant.name, len(done), len(ids), partial)
    if not todo:
        return [done[rid] for rid in ids]
    budget = s.max_new_tokens
    requests = [
        Request(prompt_ids=prompts[i], max_new_tokens=budget, tag=ids[i])
        if prompts is not None  # a local model: the ids rendered once for loss and prompt
        else Request(messages=records[i]["messages"][:-1], max_new_tokens=budget, tag=ids[i])
        for i in todo
    ]
    backend, own = variant.backend, variant.backend is None
    if backend is None and variant.open_backend is not None:
        backend = variant.open_backend()
    elif backend is None:
        from specialize.infer.hf import HFBackend

        backend = HFBackend(variant.model, variant.tokenizer, s.fmt, s.batch_size)
    sink: IO[str] | None = None
    if partial is not None:
        partial.parent.mkdir(parents=True, exist_ok=True)
        sink = partial.open("a", encoding="utf-8")

    def finished(k: int, result: Result) -> None:
        row = {"id": ids[todo[k]], **_answer_of(result)}
        done[row["id"]] = row
        if sink is not None and not result.error:
            sink.write(json.dumps(row, ensure_ascii=False) + "\n")
            sink.flush()

    try:
        backend.generate(
            requests, progress=progress, desc=f"generate {variant.name}", on_result=finished
        )
    finally:
        if sink is not None:
            sink.close()
        if own:
            backend.close()
    return [done[rid] for rid in ids]


def _answer_of(result: Result) -> dict[str, Any]:
    """A backend's result as an answer row (the partial file's format)."""
    row: dict[str, Any] = {
        "text": result.text,
        "new_tokens": result.new_tokens,
        "stopped": result.stopped,
    }
    if result.error:
        row["error"] = result.error
    return row


def _load_partial(path: Path | None, ids: set[str]) -> dict[str, dict[str, Any]]:
    """Answers an interrupted evaluation already finished (a torn last line is ignored)."""
    if path is None or not path.is_file():
        return {}
    done = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if row.get("id") in ids and not row.get("error"):
            done[row["id"]] = row
    return done
