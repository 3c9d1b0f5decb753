"""``specialize run``: the stages in order, writing one run directory.

data -> format check -> base evaluation -> LoRA training -> tuned evaluation -> merge + check
-> GGUF + quantize + round-trip checks, speed, quantized evaluation -> model card -> manifest.
All input checks that need no model weights (config, data files,
splits, leakage, chat format, sequence lengths) run before the model loads, and the run is
built in a hidden staging folder that is renamed into place only when every stage succeeded:
a failed run never leaves a run directory that looks complete.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

from specialize.config import RunConfig
from specialize.data.batches import Example, pack, text_examples, to_examples
from specialize.data.leakage import find_document_leaks, find_leaks, leak_report
from specialize.data.read import data_files, read_documents, read_records
from specialize.data.split import assign_splits, split_hash
from specialize.errors import SpecializeError
from specialize.infer.llama_process import NativeCrash
from specialize.io import read_json, read_jsonl, sha256_file, write_json, write_jsonl, write_text
from specialize.models.chat import check_format, render_prompt
from specialize.models.load import is_tied, load_model, load_tokenizer, resolve
from specialize.runinfo import Timer, hardware, installed_stack, versions
from specialize.train.checkpoint import complete_checkpoints, fingerprint

log = logging.getLogger("specialize")


def prepare_data(cfg: RunConfig, tokenizer: Any | None = None) -> dict[str, Any]:
    """Read, split and leak-check the data; with a tokenizer, also render and length-check."""
    path = cfg.resolve(cfg.data.path)
    cols = cfg.data.columns
    if cfg.mode == "cpt":
        records, stats = read_documents(path, cols.text, cols.id)
    else:
        records, stats = read_records(
            path, cfg.data.format, cols.model_dump(), cfg.data.system_prompt
        )
    splits = assign_splits(records, cfg.data.split)
    unused = 0
    if cfg.data.max_train_records and len(splits["train"]) > cfg.data.max_train_records:
        ranked = sorted(splits["train"], key=lambda r: split_hash(cfg.data.split.seed, r["id"]))
        keep = {r["id"] for r in ranked[: cfg.data.max_train_records]}
        unused = len(splits["train"]) - len(keep)
        splits["train"] = [r for r in splits["train"] if r["id"] in keep]
    if not splits["train"]:
        raise SpecializeError("the split rules leave no training records", field="data.split")
    if cfg.mode == "cpt":
        leaks = find_document_leaks(splits, cfg.data.leakage.threshold)
    else:
        leaks = find_leaks(splits, cfg.data.leakage.threshold)
    report = leak_report(leaks)
    if leaks and cfg.data.leakage.fail:
        first = leaks[0]
        what = "documents" if cfg.mode == "cpt" else "question-answer pairs"
        raise SpecializeError(
            f"{report['exact']} exact and {report['near']} near-duplicate {what} "
            f"across splits, e.g. '{first.a_id}' ({first.a_split}) ~ '{first.b_id}' "
            f"({first.b_split}); fix the data or set data.leakage.fail: false",
            path=path,
            field="data.leakage",
        )
    out: dict[str, Any] = {
        "path": path,
        "records": records,
        "splits": splits,
        "read_stats": stats,
        "leakage": report,
        "unused_train_records": unused,
    }
    if tokenizer is None:
        return out
    examples, counts = {}, {}
    if cfg.mode == "cpt":
        if tokenizer.eos_token_id is None:
            raise SpecializeError(
                "mode cpt joins documents with EOS, but the tokenizer has none", field="model.base"
            )
        for name, recs in splits.items():
            docs = [
                (r["id"], tokenizer(r["text"], add_special_tokens=False)["input_ids"]) for r in recs
            ]
            examples[name] = text_examples(docs, tokenizer.eos_token_id, cfg.chat.max_seq_len)
            counts[name] = {
                "documents": len(docs),
                "split_into_chunks": sum(1 for e in examples[name] if not e.id.endswith("#0")),
            }
    else:
        fmt = cfg.chat.format
        check_format(tokenizer, fmt, [r["messages"] for r in records], where=str(path))
        for name, recs in splits.items():
            examples[name], counts[name] = to_examples(
                recs, tokenizer, fmt, cfg.chat.max_seq_len, cfg.chat.overlength, str(path)
            )
    out["examples"] = examples
    out["length_counts"] = counts
    return out


def training_rows(cfg: RunConfig, examples: list[Example]) -> list[Example]:
    """What the optimizer sees: packed rows (cpt, or sft with train.packing) or examples.

    CPT chunks are all one kind of text, so they are packed densest-first. SFT examples mix
    short and long records, so they are placed in a seeded random order: a row then mixes
    them, instead of rows (and steps) of only long or only short examples (see ``pack``).
    """
    if cfg.mode == "cpt":
        return pack(examples, cfg.chat.max_seq_len)
    if cfg.train.packing:
        return pack(examples, cfg.chat.max_seq_len, seed=cfg.train.seed)
    return examples


def _data_stats(prepared: dict[str, Any], cfg: RunConfig) -> dict[str, Any]:
    splits = prepared["splits"]
    stats: dict[str, Any] = {
        "source": str(prepared["path"]),
        "read": prepared["read_stats"].as_dict(),
        "records": len(prepared["records"]),
        "splits": {k: len(v) for k, v in splits.items()},
        "unused_train_records": prepared.get("unused_train_records", 0),
        "split_rule": cfg.data.split.model_dump(mode="json"),
        "leakage": {
            "exact": prepared["leakage"]["exact"],
            "near": prepared["leakage"]["near"],
            "threshold": cfg.data.leakage.threshold,
        },
    }
    for field in ("kind", "difficulty", "topic"):
        if any(field in r for r in prepared["records"]):
            stats[f"by_{field}"] = {s: _count(recs, field) for s, recs in splits.items()}
    if "examples" in prepared:
        stats["tokens"] = {
            s: {
                "examples": len(ex),
                "tokens": sum(len(e) for e in ex),
                "target_tokens": sum(e.n_target for e in ex),
                "max_len": max((len(e) for e in ex), default=0),
            }
            for s, ex in prepared["examples"].items()
        }
        stats["overlength"] = prepared["length_counts"]
    return stats


def _count(records: list[dict[str, Any]], field: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in records:
        key = str(r.get(field, "(none)"))
        out[key] = out.get(key, 0) + 1
    return dict(sorted(out.items()))


def training_fingerprint(cfg: RunConfig, prepared: dict[str, Any]) -> str:
    """What a checkpoint must match to be resumed: model, data, format, LoRA, optimisation."""
    train = cfg.train.model_dump(exclude={"log_every", "eval_every", "checkpoint_every"})
    return fingerprint(
        {
            "model": cfg.model.model_dump(),
            "chat": cfg.chat.model_dump(),
            "lora": cfg.lora.model_dump(),
            "train": train,
            "data": [e.id for e in prepared["examples"]["train"]],
        }
    )


def run(cfg: RunConfig, force: bool = False, progress: bool = True, resume: bool = False) -> Path:
    """Run every stage of the config; returns the finished run directory."""
    import torch

    from specialize.evaluate.evaluation import (
        compare_text_variants,
        compare_variants,
        evaluate_text_variant,
        evaluate_variant,
        side_by_side,
    )
    from specialize.export.edge import export_edge, gguf_plan
    from specialize.export.merge import check_merged, logits_for, merge_and_save
    from specialize.report.card import write_card
    from specialize.report.eval_report import metrics_chart
    from specialize.report.manifest import write_manifest

    final = cfg.run_dir()
    if final.exists() and not force:
        raise SpecializeError("run directory already exists; use --force to replace it", path=final)
    if cfg.lora.quantize == "nf4" and not torch.cuda.is_available():
        raise SpecializeError(
            "QLoRA (4-bit NF4 through bitsandbytes) needs a CUDA GPU; none is available here",
            field="lora.quantize",
        )
    timer = Timer()
    with timer.stage("data"):
        source = resolve(cfg.model.base, cfg._base_dir)
        tokenizer = load_tokenizer(source)
        prepared = prepare_data(cfg, tokenizer)
    splits, examples = prepared["splits"], prepared["examples"]
    eval_split = "test" if splits["test"] else "validation"
    eval_records = splits[eval_split][: cfg.eval.limit] if cfg.eval.limit else splits[eval_split]
    if cfg.mode == "cpt":
        keep = {r["id"] for r in eval_records}
        eval_examples = [e for e in examples[eval_split] if e.id.rsplit("#", 1)[0] in keep]

    # Under torchrun / accelerate launch every process runs this function; only rank 0 writes
    # the run directory, evaluates and exports. The others train (the loop synchronises them)
    # and write their scratch files to a private folder that is removed at the end.
    main = int(os.environ.get("RANK", "0")) == 0
    shared_stage = final.parent / f".{final.name}.partial"
    stage = shared_stage if main else Path(tempfile.mkdtemp(prefix=f".{final.name}.rank"))
    ckpt_dir = shared_stage / "checkpoints"
    fp = training_fingerprint(cfg, prepared)
    # An adapter that finished training with this fingerprint is reused by --resume: a crash
    # after training (evaluation, merge, llama.cpp) never costs the training again.
    reuse_adapter = resume and _adapter_done(shared_stage, fp)
    if not main:
        pass
    elif resume and (reuse_adapter or complete_checkpoints(ckpt_dir)):
        log.info("resuming in %s", stage)
    else:
        if resume:
            log.info("no checkpoint to resume from in %s; starting fresh", stage)
        if stage.exists():
            shutil.rmtree(stage)
        stage.mkdir(parents=True)

    scorer = None
    if cfg.mode == "sft" and cfg.eval.enabled and main:
        from specialize.evaluate.runner import make_bertscorer

        scorer = make_bertscorer(cfg.eval.bertscore, eval_records)

    def evaluate(name: str, m: Any) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        if cfg.mode == "cpt":
            return evaluate_text_variant(
                m, eval_examples, tokenizer.pad_token_id, cfg.eval.batch_size, name
            )
        return evaluate_variant(
            m,
            tokenizer,
            eval_records,
            cfg.chat.format,
            cfg.eval.max_new_tokens,
            cfg.eval.batch_size,
            name,
            progress,
            bertscorer=scorer,
        )

    handler = logging.FileHandler(stage / "run.log", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    try:
        stats = _data_stats(prepared, cfg)
        write_text(
            stage / "config.yaml", yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
        )
        for name, recs in splits.items():
            write_jsonl(stage / "data" / f"{name}.jsonl", recs)
        write_json(stage / "data" / "stats.json", stats)
        write_json(stage / "data" / "leakage.json", prepared["leakage"])
        log.info(
            "data: %d records -> train %d, validation %d, test %d; leakage: %d exact, %d near",
            stats["records"],
            *stats["splits"].values(),
            stats["leakage"]["exact"],
            stats["leakage"]["near"],
        )

        with timer.stage("load_model"):
            model = load_model(source, cfg.model.dtype, cfg.lora.quantize)
        # Before training: a GGUF export that cannot happen is said now, not after an hour.
        gguf_skip = gguf_plan(cfg.export, model.config) if main else "not the main process"
        log.info(
            "model: %s (%s, tied embeddings: %s)",
            source.describe(),
            type(model).__name__,
            is_tied(model),
        )
        if cfg.mode == "cpt":
            pool = eval_examples or examples["train"]
            check_prompts = [e.input_ids[:64] for e in pool[: cfg.export.check_prompts]]
        else:
            pool = eval_records or splits["train"]
            check_prompts = [
                render_prompt(r["messages"][:-1], tokenizer, cfg.chat.format)
                for r in pool[: cfg.export.check_prompts]
            ]
        base_logits = logits_for(model, check_prompts)

        metrics: dict[str, dict[str, Any]] = {}
        preds: dict[str, list[dict[str, Any]]] = {}
        done_base = stage / "eval" / "base" / "metrics.json"
        if not main:
            pass
        elif cfg.eval.enabled and eval_records and resume and done_base.exists():
            preds["base"] = read_jsonl(stage / "eval" / "base" / "predictions.jsonl")
            metrics["base"] = read_json(done_base)
            log.info("base evaluation reused from the interrupted run")
        elif cfg.eval.enabled and eval_records:
            with timer.stage("eval_base"):
                preds["base"], metrics["base"] = evaluate("base", model)
            _save_eval(stage, "base", preds["base"], metrics["base"], eval_split)

        if reuse_adapter:
            from specialize.evaluate.runner import with_adapter

            peft_model = with_adapter(model, stage / "adapter")
            history = read_json(stage / "train" / "history.json")
            log.info("training reused: the interrupted run had finished its adapter")
        else:
            with timer.stage("train"):
                peft_model, history = _train(
                    cfg, model, tokenizer, examples, stage, ckpt_dir, fp, resume, progress, source
                )
        log.info(
            "trained %d steps in %.1f s (%.0f tokens/s); final validation loss %.4f",
            history["steps"],
            history["wall_s"],
            history["tokens_per_s"],
            history["validation"][-1]["loss"],
        )

        if not main:
            shutil.rmtree(stage, ignore_errors=True)
            return final
        done_tuned = stage / "eval" / "tuned" / "metrics.json"
        if cfg.eval.enabled and eval_records and reuse_adapter and done_tuned.exists():
            preds["tuned"] = read_jsonl(stage / "eval" / "tuned" / "predictions.jsonl")
            metrics["tuned"] = read_json(done_tuned)
            log.info("tuned evaluation reused from the interrupted run")
        elif cfg.eval.enabled and eval_records:
            with timer.stage("eval_tuned"):
                preds["tuned"], metrics["tuned"] = evaluate("tuned", peft_model)
            _save_eval(stage, "tuned", preds["tuned"], metrics["tuned"], eval_split)
            if cfg.mode == "cpt":
                comparison = compare_text_variants(
                    preds["base"], preds["tuned"], cfg.eval.bootstrap, cfg.train.seed
                )
            else:
                comparison = compare_variants(
                    {"base": preds["base"], "tuned": preds["tuned"]},
                    cfg.eval.breakdown_by,
                    cfg.eval.bootstrap,
                    cfg.train.seed,
                )
                write_jsonl(stage / "eval" / "side_by_side.jsonl", side_by_side(preds))
            comparison["split"] = eval_split
            write_json(stage / "eval" / "compare.json", comparison)
            metrics_chart(metrics, comparison, stage / "plots" / "metrics.png")
            d = comparison["deltas"]
            if "f1" in d:
                log.info(
                    "%s F1 base %.4f -> tuned %.4f (delta %+.4f, 95%% CI [%+.4f, %+.4f])",
                    eval_split,
                    metrics["base"]["f1"],
                    metrics["tuned"]["f1"],
                    d["f1"]["delta"],
                    d["f1"]["ci_low"],
                    d["f1"]["ci_high"],
                )
            log.info(
                "%s perplexity base %.3f -> tuned %.3f (delta %+.3f, 95%% CI [%+.3f, %+.3f])",
                eval_split,
                metrics["base"]["perplexity"],
                metrics["tuned"]["perplexity"],
                d["perplexity"]["delta"],
                d["perplexity"]["ci_low"],
                d["perplexity"]["ci_high"],
            )

        reused_merge = _merge_done(stage) if cfg.export.merge and reuse_adapter else None
        if reused_merge is not None:
            check = reused_merge
            log.info("merged model reused from the interrupted run")
        elif cfg.export.merge:
            with timer.stage("export"):
                check_dtype = getattr(torch, cfg.export.check_dtype)
                peft_model.to(check_dtype)  # merge and compare in this precision
                adapter_logits = logits_for(peft_model, check_prompts)
                saved = cfg.export.merged_dtype or cfg.model.dtype
                _, merged_logits = merge_and_save(
                    peft_model, tokenizer, stage / "merged", saved, check_prompts
                )
                check = check_merged(
                    stage / "merged",
                    check_prompts,
                    adapter_logits,
                    base_logits,
                    cfg.export.atol,
                    cfg.export.rtol,
                    check_dtype,
                    merged_logits=merged_logits,
                    saved_dtype=saved,
                )
                write_json(stage / "export" / "merge_check.json", check)
            log.info(
                "merged: max |logit diff| vs adapter %.2e, vs base %.2e -> %s",
                check["max_abs_diff_vs_adapter"],
                check["max_abs_diff_vs_base"],
                "ok" if check["passed"] else "FAILED",
            )
            if not check["passed"]:
                raise SpecializeError(
                    f"merged model disagrees with the adapter model (max |diff| "
                    f"{check['max_abs_diff_vs_adapter']:.2e}, tolerance atol "
                    f"{cfg.export.atol:g} + rtol {cfg.export.rtol:g} x max |logit|) or equals the "
                    f"base model (max |diff| vs base {check['max_abs_diff_vs_base']:.2e})",
                    field="export.atol",
                )
        if cfg.export.merge and gguf_skip is None:
            with timer.stage("gguf"):
                try:
                    export_edge(
                        stage,
                        cfg,
                        source,
                        tokenizer,
                        eval_records if cfg.eval.enabled else [],
                        preds,
                        metrics,
                        scorer,
                        progress,
                        reuse=reuse_adapter,
                    )
                except NativeCrash as e:
                    raise NativeCrash(
                        f"stage 'gguf': {e.message}; the finished stages are kept: rebuild "
                        "llama.cpp (README: llama.cpp build) or set export.gguf: false, then "
                        "rerun with --resume",
                        path=e.path,
                    ) from None

        write_json(
            stage / "env.json",
            {
                "versions": versions(),
                "installed": installed_stack(),
                "hardware": hardware(),
                "argv": sys.argv,
                "cwd": os.getcwd(),
            },
        )
        write_json(stage / "timings.json", timer.as_dict())
        write_card(stage)
        inputs = {
            "config_sha256": sha256_file(stage / "config.yaml"),
            "data": {str(p): sha256_file(p) for p in data_files(prepared["path"])},
            "base_model": {"spec": cfg.model.base, "files": source.describe()},
        }
        write_manifest(stage, inputs)
    except BaseException as e:
        log.removeHandler(handler)
        handler.close()
        if not main:
            shutil.rmtree(stage, ignore_errors=True)
        elif complete_checkpoints(ckpt_dir) or (stage / TRAIN_DONE).is_file():
            # Training progress is worth keeping: the hidden staging folder stays for --resume.
            log.error("kept %s for `specialize run --resume`", stage)
        else:
            shutil.rmtree(stage, ignore_errors=True)
        if isinstance(e, OSError) and not isinstance(e, FileNotFoundError):
            raise SpecializeError(
                f"could not write the run: {e.strerror or e}", path=stage
            ) from None
        raise
    log.removeHandler(handler)
    handler.close()
    if final.exists():
        shutil.rmtree(final)
    os.replace(stage, final)
    log.info("run directory: %s", final)
    return final


TRAIN_DONE = "train/done.json"


def _adapter_done(stage: Path, fp: str) -> bool:
    """Did an interrupted run in ``stage`` finish training an adapter with fingerprint ``fp``?

    ``train/done.json`` is written after the adapter, its metadata and the history, so its
    presence means all three are complete."""
    done = stage / TRAIN_DONE
    try:
        return done.is_file() and read_json(done).get("fingerprint") == fp
    except (OSError, ValueError):
        return False


def _train(
    cfg: RunConfig,
    model: Any,
    tokenizer: Any,
    examples: dict[str, list[Example]],
    stage: Path,
    ckpt_dir: Path,
    fp: str,
    resume: bool,
    progress: bool,
    source: Any,
) -> tuple[Any, dict[str, Any]]:
    """LoRA training into ``stage/adapter``; returns the adapted model and the history."""
    from specialize.report.plots import loss_curve
    from specialize.train import loop
    from specialize.train.lora import apply_lora, parameter_counts

    peft_model, targets = apply_lora(model, cfg.lora, cfg.train.seed)
    counts = parameter_counts(peft_model)
    write_json(stage / "train" / "adapted_modules.json", {"targets": targets, "parameters": counts})
    log.info(
        "trainable params: %s || all params: %s || trainable%%: %.4f",
        f"{counts['trainable']:,}",
        f"{counts['total']:,}",
        100 * counts["trainable"] / counts["total"],
    )
    state = loop.setup(
        peft_model,
        training_rows(cfg, examples["train"]),
        examples["validation"],
        cfg.train,
        tokenizer.pad_token_id,
        cfg.eval.batch_size,
        checkpoint_dir=ckpt_dir if cfg.train.checkpoint_every else None,
        fingerprint=fp,
    )
    if resume and cfg.train.checkpoint_every:
        state.checkpoint_dir = ckpt_dir
        loop.resume(state)
    log.info(
        "training: %d steps (%d per epoch), %d rows, batch %d x accum %d",
        state.total_steps,
        state.steps_per_epoch,
        len(state.train_examples),
        cfg.train.batch_size,
        cfg.train.grad_accum,
    )
    try:
        history = loop.fit(state, progress)
    except loop.NonFiniteLoss as e:
        last = complete_checkpoints(ckpt_dir)
        keep = f"; last good checkpoint {last[-1]} (rerun with --resume)" if last else ""
        raise SpecializeError(
            f"training stopped: {e}; lower train.lr or check the data{keep}",
            field="train.lr",
        ) from None
    loop.save(state, stage / "adapter")
    write_json(
        stage / "adapter" / "specialize.json",
        {
            "base_model": cfg.model.base,
            "base_files": source.describe(),
            "chat_format": cfg.chat.format,
            "lora": cfg.lora.model_dump(mode="json"),
            "targets": targets,
        },
    )
    write_json(stage / "train" / "history.json", history)
    loss_curve(history, stage / "plots" / "loss.png")
    if int(os.environ.get("RANK", "0")) == 0:
        write_json(stage / TRAIN_DONE, {"fingerprint": fp})
    return peft_model, history


def _merge_done(stage: Path) -> dict[str, Any] | None:
    """The check of a merge that finished and passed (written after the folder), else None."""
    try:
        check = read_json(stage / "export" / "merge_check.json")
        done = (stage / "merged" / "config.json").is_file() and bool(check["passed"])
    except (OSError, ValueError, KeyError):
        return None
    return check if done else None


def _save_eval(
    stage: Path, name: str, preds: list[dict[str, Any]], metrics: dict[str, Any], split: str
) -> None:
    write_jsonl(stage / "eval" / name / "predictions.jsonl", preds)
    write_json(stage / "eval" / name / "metrics.json", metrics | {"split": split})
