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
once the report is written. Reports: ``report.json`` (metrics + comparison),
``report.md``, ``side_by_side.jsonl``, ``metrics.png`` and ``<variant>/predictions.jsonl``.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from specialize.errors import SpecializeError
from specialize.io import read_json, read_jsonl, write_json, write_jsonl

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
    ablations: Any = None  # AblationConfig


def _suite_records(name: str, limit: int | None, seed: int = 0) -> tuple[list, Any]:
    """A suite's records (skips are logged by the loader) and its spec."""
    from specialize.evaluate.suites import get_suite, load_suite

    return load_suite(name, limit=limit, seed=seed), get_suite(name)


def _plan(req: EvalRequest) -> _Plan:
    target = req.target
    if target.is_dir():
        cfg_path = target / "config.yaml"
        if not cfg_path.is_file():
            raise SpecializeError("not a run directory (no config.yaml)", path=target)
        cfg = yaml.safe_load(cfg_path.read_text(encoding="utf-8"))
        adapter = target / "adapter"
        if not (adapter / "adapter_config.json").is_file():
            raise SpecializeError(
                "the run has no adapter (adapter/adapter_config.json)", path=target
            )
        meta = (
            read_json(adapter / "specialize.json")
            if (adapter / "specialize.json").is_file()
            else {}
        )
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
        )
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


def _ablations(data: Any, where: Path) -> Any:
    if not data:
        return None
    from specialize.evaluate.ablations import load_ablation_config

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
    """Evaluate every variant the request names; returns the output folder."""
    from specialize.evaluate.backends import OpenAIBackend
    from specialize.evaluate.evaluation import compare_variants, evaluate_variant
    from specialize.models.load import load_model, load_tokenizer, resolve

    plan = _plan(req)
    if not plan.records:
        raise SpecializeError("no records to evaluate", path=req.target)
    partial = plan.out / ".partial"
    if req.fresh and partial.exists():
        shutil.rmtree(partial)
    judge_backend = None
    if req.judge_url:
        judge_backend = OpenAIBackend(req.judge_url, req.judge_model or "judge")
        judge_backend.health_check()
    endpoint = None
    if req.endpoint:
        endpoint = OpenAIBackend(req.endpoint, req.endpoint_model or "model")
        endpoint.health_check()

    source = resolve(plan.base_spec, plan.base_dir)
    tokenizer = load_tokenizer(source)
    model = load_model(source, "float32")
    if plan.mode == "cpt":
        return _eval_cpt(plan, req, model, tokenizer)
    scorer = make_bertscorer(req.bertscore, plan.records)
    preds: dict[str, list[dict[str, Any]]] = {}
    metrics: dict[str, dict[str, Any]] = {}
    extra: dict[str, Any] = {}

    conditions = {}
    if plan.ablations is not None:
        from specialize.evaluate.ablations import build_conditions

        conditions = build_conditions(plan.records, plan.ablations)
    ablation: dict[str, Any] = {}
    cond_preds: dict[str, dict[str, list[dict[str, Any]]]] = {}

    def one(name: str, m: Any, backend: Any = None) -> None:
        preds[name], metrics[name] = evaluate_variant(
            m,
            tokenizer,
            plan.records,
            plan.fmt,
            plan.max_new_tokens,
            plan.batch_size,
            name,
            req.progress,
            backend=backend,
            bertscorer=scorer,
            judge_backend=judge_backend,
            cache_dir=partial,
        )
        _log_variant(name, metrics[name])
        for cname, (recs, report) in conditions.items():
            if not recs:
                log.warning("ablation %s: no records left (%s)", cname, report["skipped"])
                continue
            p, met = evaluate_variant(
                m,
                tokenizer,
                recs,
                plan.fmt,
                plan.max_new_tokens,
                plan.batch_size,
                f"{name}@{cname}",
                req.progress,
                backend=backend,
                bertscorer=scorer,
                cache_dir=partial,
            )
            if report["kind"] == "conflict":
                from specialize.evaluate.ablations import conflict_following

                met["conflict_following"] = conflict_following(recs, p)
            entry = ablation.setdefault(cname, {"report": report, "metrics": {}})
            entry["metrics"][name] = met
            cond_preds.setdefault(cname, {})[name] = p
            write_jsonl(plan.out / "ablations" / cname / f"{name}.jsonl", p)

    one("base", model)
    if plan.adapter is not None:
        one("tuned", with_adapter(model, plan.adapter))
    if endpoint is not None:
        one("endpoint", None, endpoint)
    if req.gguf:
        from specialize.export.gguf import GGUFBackend

        found = sorted((req.target / "gguf").glob("*.gguf")) if req.target.is_dir() else []
        if not found:
            raise SpecializeError(
                "--gguf: no GGUF files (run `specialize export` first)", path=req.target
            )
        for path in found:
            kind = path.stem.removeprefix(f"{req.target.name}-")
            one(f"gguf-{kind}", None, GGUFBackend(path))
    comparison = compare_variants(preds, plan.breakdown_by, plan.bootstrap, plan.seed)
    notes: list[str] = []
    quantized = [n for n in preds if n.startswith("gguf-")]
    if quantized and "tuned" in preds:
        from specialize.report.eval_report import results_table

        # What export cost: each GGUF against the unquantized tuned model it came from.
        subset = {n: preds[n] for n in ["tuned", *quantized]}
        vs_tuned = compare_variants(subset, [], plan.bootstrap, plan.seed)
        extra["vs_tuned"] = vs_tuned
        notes += ["## Exported GGUFs against the tuned model", ""]
        notes += results_table({n: metrics[n] for n in subset}, vs_tuned) + [""]
    if ablation:
        from specialize.evaluate.ablations import condition_table

        extra["ablations"] = ablation
        notes += ["## Ablation conditions", ""]
        for name in preds:
            by_cond = {c: a["metrics"][name] for c, a in ablation.items() if name in a["metrics"]}
            notes += [f"### {name}", "", condition_table(by_cond), ""]
        skipped = {c: a["report"]["skipped"] for c, a in ablation.items()}
        notes += [f"Records left out per condition (reason: count): {skipped}", ""]
        if quantized and "tuned" in preds:
            # The triage seed's table: what quantization cost under each condition.
            cond_metrics = {c: a["metrics"] for c, a in ablation.items()}
            per_cond = quantization_by_condition(
                cond_preds, cond_metrics, quantized, plan.bootstrap, plan.seed
            )
            extra["ablations_vs_tuned"] = per_cond
            notes += ["### Exported GGUFs against the tuned model, per condition", ""]
            notes += condition_delta_table(per_cond) + [""]
    _write(plan, preds, metrics, comparison, extra, notes)
    shutil.rmtree(partial, ignore_errors=True)
    return plan.out


QUANT_METRICS = ("accuracy", "f1", "exact_match", "bertscore_f1")


def quantization_by_condition(
    cond_preds: dict[str, dict[str, list[dict[str, Any]]]],
    cond_metrics: dict[str, dict[str, dict[str, Any]]],
    quantized: list[str],
    samples: int,
    seed: int,
) -> dict[str, dict[str, Any]]:
    """Per ablation condition: each GGUF against the tuned model on that condition's records
    (paired bootstrap CIs), as ``{condition: {variant: {metric: {value, tuned, delta, ci}}}}``.
    ``cond_metrics`` are the metrics already computed per condition and variant.
    """
    from specialize.evaluate.evaluation import compare_variants

    out: dict[str, dict[str, Any]] = {}
    for cname, by_variant in cond_preds.items():
        present = [q for q in quantized if q in by_variant]
        if "tuned" not in by_variant or not present:
            continue
        comp = compare_variants({n: by_variant[n] for n in ["tuned", *present]}, [], samples, seed)
        tuned = cond_metrics[cname]["tuned"]
        row: dict[str, Any] = {"n": comp["n"]}
        for q in present:
            mine = cond_metrics[cname][q]
            row[q] = {
                m: {"tuned": tuned[m], "value": mine[m], **comp["vs_reference"][q][m]}
                for m in QUANT_METRICS
                if m in comp["vs_reference"][q] and m in tuned and m in mine
            }
        out[cname] = row
    return out


def condition_delta_table(per_cond: dict[str, dict[str, Any]]) -> list[str]:
    """Rows: conditions; per metric: the tuned value, then each GGUF's value and Δ (95% CI)."""
    first = next(iter(per_cond.values()), {})
    variants = [k for k in first if k != "n"]
    metrics = [m for m in QUANT_METRICS if any(m in first[q] for q in variants)]
    head = ["condition", "n"]
    for m in metrics:
        head.append(f"tuned {m}")
        for q in variants:
            head += [f"{q} {m}", f"Δ {q} − tuned (95% CI)"]
    per_metric = 1 + 2 * len(variants)
    lines = [
        "| " + " | ".join(head) + " |",
        "|---|---:" + ("|---:" + "|---:|---" * len(variants)) * len(metrics) + "|",
    ]
    for cname, row in per_cond.items():
        cells = [cname.replace("|", "\\|"), str(row["n"])]
        for m in metrics:
            group = ["-"] * per_metric
            for i, q in enumerate(variants):
                d = row.get(q, {}).get(m)
                if d is None:
                    continue
                group[0] = f"{d['tuned']:.4f}"
                group[1 + 2 * i] = f"{d['value']:.4f}"
                group[2 + 2 * i] = f"{d['delta']:+.4f} [{d['ci_low']:+.4f}, {d['ci_high']:+.4f}]"
            cells += group
        lines.append("| " + " | ".join(cells) + " |")
    return lines


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


def _log_variant(name: str, m: dict[str, Any]) -> None:
    parts = [f"{k} {m[k]:.4f}" for k in ("exact_match", "f1", "accuracy", "perplexity") if k in m]
    log.info("%s: %d records, %s", name, m["n"], ", ".join(parts))


def _write(
    plan: _Plan,
    preds: dict[str, list[dict[str, Any]]],
    metrics: dict[str, dict[str, Any]],
    comparison: dict[str, Any],
    extra: dict[str, Any],
    notes: list[str] | None = None,
) -> None:
    from specialize.evaluate.evaluation import side_by_side
    from specialize.report.eval_report import metrics_chart, write_report

    out = plan.out
    for name in preds:
        write_jsonl(out / name / "predictions.jsonl", preds[name])
        write_json(out / name / "metrics.json", metrics[name])
    write_jsonl(out / "side_by_side.jsonl", side_by_side(preds))
    write_json(
        out / "report.json",
        {"title": plan.title, "metrics": metrics, "compare": comparison} | extra,
    )
    metrics_chart(metrics, comparison, out / "metrics.png")
    write_report(out, plan.title, metrics, comparison, notes)
    log.info("report: %s", out / "report.md")


def _eval_cpt(plan: _Plan, req: EvalRequest, model: Any, tokenizer: Any) -> Path:
    """Held-out perplexity base vs tuned; embedding quality when documents have titles."""
    from specialize.data.batches import text_examples
    from specialize.evaluate.evaluation import compare_text_variants, evaluate_text_variant

    cfg = plan.run_cfg or {}
    cols = cfg.get("data", {}).get("columns", {})
    row_len = cfg.get("chat", {}).get("max_seq_len", 512)
    docs = [
        (r["id"], tokenizer(r["text"], add_special_tokens=False)["input_ids"]) for r in plan.records
    ]
    examples = text_examples(docs, tokenizer.eos_token_id, row_len)
    preds, metrics = {}, {}
    preds["base"], metrics["base"] = evaluate_text_variant(
        model, examples, tokenizer.pad_token_id, plan.batch_size, "base"
    )
    emb: dict[str, Any] = {}
    items = _title_items(plan.records, cols)
    if items:
        from specialize.evaluate.embeddings import evaluate_embeddings

        emb["base"] = evaluate_embeddings(model, tokenizer, items, plan.batch_size, req.progress)
    tuned = with_adapter(model, plan.adapter) if plan.adapter else None
    if tuned is not None:
        preds["tuned"], metrics["tuned"] = evaluate_text_variant(
            tuned, examples, tokenizer.pad_token_id, plan.batch_size, "tuned"
        )
        if items:
            emb["tuned"] = evaluate_embeddings(
                tuned, tokenizer, items, plan.batch_size, req.progress
            )
    comparison = compare_text_variants(preds["base"], preds["tuned"], plan.bootstrap, plan.seed)
    extra: dict[str, Any] = {}
    if emb:
        from specialize.evaluate.embeddings import compare_embeddings, plot_similarity

        extra["embeddings"] = {
            k: {kk: vv for kk, vv in v.items() if kk != "ranks"} for k, v in emb.items()
        }
        if "tuned" in emb:
            extra["embeddings"]["compare"] = compare_embeddings(emb["base"], emb["tuned"])
        plot_similarity({k: v["abstracts"] for k, v in emb.items()}, plan.out / "similarity.png")
    _write(plan, preds, metrics, comparison, extra, _embedding_notes(extra.get("embeddings")))
    return plan.out


def _embedding_notes(emb: dict[str, Any] | None) -> list[str]:
    """Markdown for the embedding-quality results (title -> abstract retrieval, similarity)."""
    if not emb or "compare" not in emb:
        return []
    comp = emb["compare"]
    lines = [
        "## Embedding quality",
        "",
        f"Mean-pooled last-layer hidden states of {comp['n']} held-out abstracts and their "
        "titles; each title must retrieve its own abstract among all of them (ties count "
        "against the model).",
        "",
        "| metric | base | tuned | Δ tuned − base (95% CI) |",
        "|---|---:|---:|---|",
    ]
    for key, d in comp["deltas"].items():
        lines.append(
            f"| title→abstract {key} | {d['base']:.3f} | {d['tuned']:.3f} | "
            f"{d['delta']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}] |"
        )
    for key, d in comp["similarity"].items():
        if key == "anisotropy":  # the same number as the mean; named in the text below
            continue
        lines.append(
            f"| abstract cosine similarity {key} | {d['base']:.3f} | {d['tuned']:.3f} | "
            f"{d['delta']:+.3f} |"
        )
    return lines + [
        "",
        "The mean pairwise cosine similarity is the anisotropy: the closer to 1, the more "
        "every abstract looks like every other one.",
        "",
        "![similarity](similarity.png)",
        "",
    ]


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
