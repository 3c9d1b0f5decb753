"""``specialize eval``: evaluate the variants of a run (or a suite) and write one report.

Targets:

- a run directory: base and tuned (the run's adapter) on the run's saved test split, or on
  an external suite with ``suite``; cpt runs get held-out perplexity and, when the documents
  have titles, embedding quality (title -> abstract retrieval, similarity distribution);
- a suite config (``examples/suites/*.yaml``): the config's model on that suite, plus the
  tuned model when a run directory is given.

An OpenAI-compatible endpoint adds a variant (``endpoint``) answered by that server, and
can also act as the LLM judge. Generated answers are saved as they finish under
``<out>/.partial/``; a rerun of the same command resumes from them, and they are removed
once the results are written. Files: ``<variant>/predictions.jsonl`` and ``metrics.json``
(the evaluation stage writes them), ``side_by_side.jsonl`` and ``report.json`` (metrics,
comparisons, ablations, embeddings); ``report.md`` and the charts are rendered from those by
:mod:`specialize.report.eval_report` (``specialize eval`` calls both).
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from specialize.config import AblationConfig
from specialize.data.read import Record
from specialize.data.tasks import Catalog
from specialize.errors import SpecializeError
from specialize.evaluate.ablations import build_conditions, conflict_following
from specialize.evaluate.compare import (
    compare_text_variants,
    compare_variants,
    quantization_by_condition,
    side_by_side,
)
from specialize.evaluate.stage import EvalResults, EvalSettings, Variant, evaluate
from specialize.infer.llamacpp import LlamaCppBackend
from specialize.infer.types import Backend
from specialize.io import read_json, read_jsonl, write_json, write_jsonl
from specialize.models.load import load_model, load_tokenizer, resolve

log = logging.getLogger("specialize")


@dataclass
class EvalRequest:
    target: Path
    run_dir: Path | None = None  # for a suite config: also evaluate this run's tuned model
    suite: str | None = None  # for a run directory: evaluate on this suite instead
    out: Path | None = None
    limit: int | None = None
    max_new_tokens: int | None = None
    batch_size: int | None = None
    bertscore: bool = True
    endpoint: str | None = None
    endpoint_model: str | None = None
    judge_url: str | None = None
    judge_model: str | None = None
    gguf: bool = False  # also evaluate every GGUF in RUN/gguf/ through llama.cpp
    fresh: bool = False
    progress: bool = True
    breakdown_by: list[str] = field(default_factory=list)


@dataclass
class _Plan:
    title: str
    records: list[dict[str, Any]]
    base_spec: str
    base_dir: Path | None
    fmt: str
    adapter: Path | None
    out: Path
    max_new_tokens: int
    batch_size: int
    breakdown_by: list[str]
    seed: int = 0
    bootstrap: int = 2000
    mode: str = "sft"
    run_cfg: dict[str, Any] | None = None
    ablations: AblationConfig | None = None
    catalog: Catalog | None = None  # a run trained on generated data: its tasks.json


def _suite_records(name: str, limit: int | None, seed: int = 0) -> tuple[list, Any]:
    """A suite's records (skips are logged by the loader) and its spec."""
    from specialize.evaluate.suites import get_suite, load_suite

    return load_suite(name, limit=limit, seed=seed), get_suite(name)


def _plan(req: EvalRequest) -> _Plan:
    """What to evaluate: a run directory's variants, or a suite config's model."""
    return _run_plan(req) if req.target.is_dir() else _suite_plan(req)


def _run_plan(req: EvalRequest) -> _Plan:
    target = req.target
    cfg_path = target / "config.yaml"
    if not cfg_path.is_file():
        raise SpecializeError("not a run directory (no config.yaml)", path=target)
    cfg = yaml.safe_load(cfg_path.read_text(encoding="utf-8"))
    adapter = target / "adapter"
    if not (adapter / "adapter_config.json").is_file():
        raise SpecializeError("the run has no adapter (adapter/adapter_config.json)", path=target)
    meta = read_json(adapter / "specialize.json") if (adapter / "specialize.json").is_file() else {}
    ev = cfg.get("eval", {})
    if req.suite:
        records, spec = _suite_records(req.suite, req.limit)
        title = f"{req.suite}: base vs tuned ({target.name})"
        out = req.out or target / "eval" / req.suite
        max_new = req.max_new_tokens or spec.max_new_tokens
        breakdown = req.breakdown_by or ["subset", "type", "title"]
        mode = "sft"
    else:
        split = "test" if (target / "data" / "test.jsonl").is_file() else "validation"
        path = target / "data" / f"{split}.jsonl"
        if not path.is_file():
            raise SpecializeError("the run saved no test or validation split", path=target)
        records = read_jsonl(path)
        if req.limit:
            records = records[: req.limit]
        title = f"{target.name}: base vs tuned on the {split} split"
        out = req.out or target / "eval"
        max_new = req.max_new_tokens or ev.get("max_new_tokens", 48)
        breakdown = req.breakdown_by or ev.get("breakdown_by", [])
        mode = cfg.get("mode", "sft")
    return _Plan(
        title,
        records,
        meta.get("base_model", cfg["model"]["base"]),
        None,
        meta.get("chat_format", cfg.get("chat", {}).get("format", "chatml")),
        adapter,
        out,
        max_new,
        req.batch_size or ev.get("batch_size", 16),
        breakdown,
        cfg.get("train", {}).get("seed", 0),
        ev.get("bootstrap", 2000),
        mode,
        cfg,
        _ablations(ev.get("ablations"), cfg_path),
        _catalog(target) if not req.suite else None,
    )


def _catalog(run: Path) -> Catalog | None:
    """The task catalog a run's generated records were made with (``tasks.json``), so their
    answers are scored by their task (at the top of the run, else beside its data); None for
    a run trained on given records."""
    found = [p for p in (run / "tasks.json", run / "data" / "tasks.json") if p.is_file()]
    return Catalog.from_json(read_json(found[0])) if found else None


def _suite_plan(req: EvalRequest) -> _Plan:
    target = req.target
    if not target.is_file():
        raise SpecializeError("no such run directory or suite config", path=target)
    scfg = read_suite_config(target)
    limit = req.limit if req.limit is not None else scfg.get("limit")
    records, spec = _suite_records(scfg["suite"], limit, scfg.get("seed", 0))
    adapter = None
    fmt = scfg.get("chat_format", "chatml")
    base = scfg.get("model", "bundled:smollm2-135m-instruct")
    if req.run_dir is not None:
        adapter = req.run_dir / "adapter"
        if not (adapter / "adapter_config.json").is_file():
            raise SpecializeError("the run has no adapter", path=req.run_dir)
    name = scfg["suite"]
    out = req.out or Path("runs") / "eval" / name
    return _Plan(
        f"{name} ({base})" + (f" vs tuned ({req.run_dir.name})" if req.run_dir else ""),
        records,
        base,
        target.parent,
        fmt,
        adapter,
        out,
        req.max_new_tokens or scfg.get("max_new_tokens") or spec.max_new_tokens,
        req.batch_size or scfg.get("batch_size", 16),
        req.breakdown_by or ["subset", "type", "title"],
        ablations=_ablations(scfg.get("ablations"), target),
    )


SUITE_KEYS = (
    "suite",
    "model",
    "limit",
    "max_new_tokens",
    "batch_size",
    "chat_format",
    "seed",
    "ablations",
)


def read_suite_config(path: Path) -> dict[str, Any]:
    """A suite config (``examples/suites/*.yaml``), checked; one-line errors name the key."""
    from specialize.evaluate.suites import SUITES

    try:
        scfg = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise SpecializeError(f"not valid YAML: {e}", path=path) from None
    if not isinstance(scfg, dict):
        raise SpecializeError("a suite config must be a mapping", path=path)
    unknown = sorted(set(scfg) - set(SUITE_KEYS))
    if unknown:
        raise SpecializeError(
            f"unknown key '{unknown[0]}' (known: {', '.join(SUITE_KEYS)})",
            path=path,
            field=unknown[0],
        )
    if scfg.get("suite") not in SUITES:
        raise SpecializeError(
            f"'suite' must be one of {', '.join(SUITES)}, got {scfg.get('suite')!r}",
            path=path,
            field="suite",
        )
    for key in ("limit", "max_new_tokens", "batch_size"):
        value = scfg.get(key)
        if value is not None and (not isinstance(value, int) or value < 1):
            raise SpecializeError(f"'{key}' must be a positive integer", path=path, field=key)
    return scfg


def _ablations(data: Any, where: Path) -> AblationConfig | None:
    if not data:
        return None
    from specialize.config import load_ablation_config

    try:
        return load_ablation_config(data)
    except SpecializeError as e:
        raise SpecializeError(e.message, path=where, field=e.field) from None


def make_bertscorer(enabled: bool, records: list[dict[str, Any]]) -> Any:
    if not enabled or not any(r.get("task", "qa") == "qa" for r in records):
        return None
    from specialize.evaluate.bertscore import BertScorer

    try:
        return BertScorer()
    except SpecializeError as e:
        log.warning("BERTScore left out: %s", e.one_line())
        return None


def run_eval(req: EvalRequest) -> Path:
    """Evaluate every variant the request names; returns the output folder.

    Writes each variant's ``<out>/<variant>/`` (through the evaluation stage),
    ``side_by_side.jsonl`` and ``report.json`` (metrics, comparisons, ablations, embeddings);
    :func:`specialize.report.eval_report.write_eval_report` renders ``report.md`` and the
    charts from those files."""
    plan = _plan(req)
    if not plan.records:
        raise SpecializeError("no records to evaluate", path=req.target)
    partial = plan.out / ".partial"
    if req.fresh and partial.exists():
        shutil.rmtree(partial)
    judge_backend, endpoint = _remote_backends(req)
    source = resolve(plan.base_spec, plan.base_dir)
    tokenizer = load_tokenizer(source)
    model = load_model(source, "float32")
    settings = _settings(plan)
    if plan.mode == "cpt":
        return _eval_cpt(plan, req, model, tokenizer, settings)
    conditions = build_conditions(plan.records, plan.ablations) if plan.ablations else {}
    ev = _Evaluation(
        plan, settings, conditions, partial, make_bertscorer(req.bertscore, plan.records),
        judge_backend, req.progress,
    )  # fmt: skip
    ev.run(Variant("base", model=model, tokenizer=tokenizer))
    if plan.adapter is not None:
        ev.run(Variant("tuned", model=with_adapter(model, plan.adapter), tokenizer=tokenizer))
    if endpoint is not None:
        ev.run(Variant("endpoint", backend=endpoint))
    for kind, path in _gguf_files(req):
        with LlamaCppBackend(path) as backend:  # one child for the variant and its conditions
            ev.run(Variant(f"gguf-{kind}", backend=backend))
    _write(plan, ev.results, *ev.comparisons())
    shutil.rmtree(partial, ignore_errors=True)
    return plan.out


def _settings(plan: _Plan) -> EvalSettings:
    row_len = (plan.run_cfg or {}).get("chat", {}).get("max_seq_len", 512)
    return EvalSettings(
        fmt=plan.fmt,
        max_new_tokens=plan.max_new_tokens,
        batch_size=plan.batch_size,
        mode="cpt" if plan.mode == "cpt" else "sft",
        max_seq_len=row_len,
        breakdown_by=tuple(plan.breakdown_by),
        bootstrap=plan.bootstrap,
        seed=plan.seed,
        catalog=plan.catalog,
    )


def _remote_backends(req: EvalRequest) -> tuple[Backend | None, Backend | None]:
    """The judge and the evaluated endpoint, each checked to answer before any model loads."""
    from specialize.infer.http import OpenAIBackend

    judge_backend = endpoint = None
    key = os.environ.get("SPECIALIZE_API_KEY") or None  # a keyed `specialize serve`
    if req.judge_url:
        judge_backend = OpenAIBackend(req.judge_url, req.judge_model or "judge", api_key=key)
        judge_backend.health_check()
    if req.endpoint:
        endpoint = OpenAIBackend(req.endpoint, req.endpoint_model or "model", api_key=key)
        endpoint.health_check()
    return judge_backend, endpoint


def _gguf_files(req: EvalRequest) -> list[tuple[str, Path]]:
    """``--gguf``: (type, path) of every GGUF file in RUN/gguf/."""
    if not req.gguf:
        return []
    found = sorted((req.target / "gguf").glob("*.gguf")) if req.target.is_dir() else []
    if not found:
        raise SpecializeError(
            "--gguf: no GGUF files (run `specialize export` first)", path=req.target
        )
    return [(path.stem.removeprefix(f"{req.target.name}-"), path) for path in found]


@dataclass
class _Evaluation:
    """The variants of one report, each on the records and on every ablation condition."""

    plan: _Plan
    settings: EvalSettings
    conditions: dict[str, tuple[list[Record], dict[str, Any]]]
    partial: Path
    scorer: Any
    judge: Backend | None
    progress: bool
    results: EvalResults = field(default_factory=EvalResults)
    ablation: dict[str, dict[str, Any]] = field(default_factory=dict)
    cond_preds: dict[str, dict[str, list[dict[str, Any]]]] = field(default_factory=dict)

    def run(self, variant: Variant) -> None:
        """The variant on the records (``<out>/<name>/``), then on each condition."""
        self.results.add(
            evaluate(
                [variant],
                self.plan.records,
                self.settings,
                self.plan.out,
                partial_dir=self.partial,
                scorer=self.scorer,
                judge=self.judge,
                progress=self.progress,
            )  # fmt: skip
        )
        for cname, (recs, report) in self.conditions.items():
            if not recs:
                log.warning("ablation %s: no records left (%s)", cname, report["skipped"])
                continue
            renamed = replace(variant, name=f"{variant.name}@{cname}")
            got = evaluate(
                [renamed], recs, self.settings, None,
                partial_dir=self.partial, scorer=self.scorer, progress=self.progress,
            )[renamed.name]  # fmt: skip
            if report["kind"] == "conflict":
                got.metrics["conflict_following"] = conflict_following(recs, got.predictions)
            entry = self.ablation.setdefault(cname, {"report": report, "metrics": {}})
            entry["metrics"][variant.name] = got.metrics
            self.cond_preds.setdefault(cname, {})[variant.name] = got.predictions
            path = self.plan.out / "ablations" / cname / f"{variant.name}.jsonl"
            write_jsonl(path, got.predictions)

    def comparisons(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """Every variant against base; GGUFs against tuned, overall and per condition."""
        plan, preds = self.plan, self.results.predictions()
        comparison = compare_variants(preds, plan.breakdown_by, plan.bootstrap, plan.seed)
        extra: dict[str, Any] = {}
        quantized = [n for n in preds if n.startswith("gguf-")]
        if quantized and "tuned" in preds:
            # What export cost: each GGUF against the unquantized tuned model it came from.
            subset = {n: preds[n] for n in ["tuned", *quantized]}
            extra["vs_tuned"] = compare_variants(subset, [], plan.bootstrap, plan.seed)
        if self.ablation:
            extra["ablations"] = self.ablation
            if quantized and "tuned" in preds:
                cond_metrics = {c: a["metrics"] for c, a in self.ablation.items()}
                extra["ablations_vs_tuned"] = quantization_by_condition(
                    self.cond_preds, cond_metrics, quantized, plan.bootstrap, plan.seed
                )
        return comparison, extra


def with_adapter(model: Any, adapter: Path) -> Any:
    from peft import PeftModel

    from specialize.models.load import is_tied
    from specialize.train.lora import untie_output_head

    meta = read_json(adapter / "specialize.json") if (adapter / "specialize.json").is_file() else {}
    targets = meta.get("targets", [])
    if is_tied(model) and any(t.split(".")[-1] in ("lm_head", "embed_out") for t in targets):
        untie_output_head(model)  # the adapter was trained on an untied head
    try:
        return PeftModel.from_pretrained(model, str(adapter)).eval()
    except (OSError, ValueError, RuntimeError) as e:
        raise SpecializeError(f"could not load the adapter: {e}", path=adapter) from None


def _write(
    plan: _Plan, results: EvalResults, comparison: dict[str, Any], extra: dict[str, Any]
) -> None:
    """``side_by_side.jsonl`` (answers) and ``report.json`` (everything the report shows)."""
    out = plan.out
    if plan.mode != "cpt":
        write_jsonl(out / "side_by_side.jsonl", side_by_side(results.predictions()))
    write_json(
        out / "report.json",
        {"title": plan.title, "metrics": results.metrics(), "compare": comparison} | extra,
    )


def _eval_cpt(
    plan: _Plan, req: EvalRequest, model: Any, tokenizer: Any, settings: EvalSettings
) -> Path:
    """Held-out perplexity base vs tuned; embedding quality when documents have titles."""
    from specialize.evaluate.embeddings import compare_embeddings, evaluate_embeddings

    items = _title_items(plan.records, (plan.run_cfg or {}).get("data", {}).get("columns", {}))
    emb: dict[str, Any] = {}
    results = evaluate(
        [Variant("base", model=model, tokenizer=tokenizer)], plan.records, settings, plan.out
    )
    if items:
        emb["base"] = evaluate_embeddings(model, tokenizer, items, plan.batch_size, req.progress)
    if plan.adapter is not None:
        tuned = with_adapter(model, plan.adapter)
        variant = Variant("tuned", model=tuned, tokenizer=tokenizer)
        results.add(evaluate([variant], plan.records, settings, plan.out))
        if items:
            emb["tuned"] = evaluate_embeddings(
                tuned, tokenizer, items, plan.batch_size, req.progress
            )
    preds = results.predictions()
    comparison = compare_text_variants(preds["base"], preds["tuned"], plan.bootstrap, plan.seed)
    extra: dict[str, Any] = {}
    if emb:
        extra["embeddings"] = {
            k: {kk: vv for kk, vv in v.items() if kk != "ranks"} for k, v in emb.items()
        }
        if "tuned" in emb:
            extra["embeddings"]["compare"] = compare_embeddings(emb["base"], emb["tuned"])
    _write(plan, results, comparison, extra)
    return plan.out


def _title_items(records: list[dict[str, Any]], cols: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(id, title, body) when documents were built from a title column and a body column."""
    text_cols = cols.get("text")
    if not isinstance(text_cols, list) or len(text_cols) < 2:
        return []
    items = []
    for r in records:
        title, _, body = r["text"].partition("\n\n")
        if title.strip() and body.strip():
            items.append((r["id"], title.strip(), body.strip()))
    return items
