"""``specialize run``: the stages in order, writing one run directory.

data -> format check -> base evaluation -> LoRA training -> tuned evaluation -> merge + check
-> GGUF + quantize + round-trip checks, speed, quantized evaluation -> comparisons -> model
card -> manifest. All input checks that need no model weights (config, data files, splits,
leakage, chat format, sequence lengths) run before the model loads. The run is built in a
hidden staging folder (:class:`~specialize.rundir.RunDir`: ranks, run.log, what a failed run
keeps for ``--resume``) and renamed into place only when every stage succeeded.

``--resume`` reuses every stage the interrupted run finished: the base evaluation, the adapter
(``train/done.json`` with the same training fingerprint), the tuned evaluation, the merge, each
GGUF file and each quantized evaluation.
"""

from __future__ import annotations

import logging
import math
import os
import sys
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from specialize.config import RunConfig
from specialize.data.prepare import PreparedData, prepare_data, training_rows
from specialize.data.read import Record, data_files
from specialize.data.synth import SynthOutput
from specialize.errors import SpecializeError
from specialize.evaluate.stage import EvalResults, EvalSettings, Variant, evaluate
from specialize.infer.llama_process import NativeCrash
from specialize.io import read_json, sha256_file, write_json, write_jsonl, write_text
from specialize.models.chat import render_prompt
from specialize.models.load import ModelSource, is_tied, load_model, load_tokenizer, resolve
from specialize.rundir import RunDir
from specialize.runinfo import Timer, hardware, installed_stack, versions
from specialize.train.checkpoint import complete_checkpoints, fingerprint

# prepare_data and training_rows are re-exported: scripts and benches import them from here.
__all__ = ["prepare_data", "run", "training_fingerprint", "training_rows"]

log = logging.getLogger("specialize")


def run(cfg: RunConfig, force: bool = False, progress: bool = True, resume: bool = False) -> Path:
    """Run every stage of the config; returns the finished run directory."""
    from specialize.evaluate.compare import write_run_comparisons
    from specialize.export.pick import write_pick

    rundir = RunDir(cfg.run_dir())
    rundir.check_free(force)
    _check_hardware(cfg)
    timer = Timer()
    source = resolve(cfg.model.base, cfg._base_dir)
    tokenizer = load_tokenizer(source)
    synth, model = _synthesize(cfg, source, tokenizer, timer, progress)
    with timer.stage("data"):
        data = prepare_data(cfg, tokenizer, synth.out_dir / "dataset.jsonl" if synth else None)
    fp = training_fingerprint(cfg, data)
    reuse = resume and rundir.adapter_done(fp)  # training (and what follows) finished before
    rundir.open(resume, reuse)
    ctx = _Run(cfg, rundir, source, tokenizer, data, timer, progress, resume, reuse, fp, synth)
    with rundir.session() as stage:
        write_data(stage, cfg, data, synth)
        model = model if model is not None else _load_model(ctx)
        gguf_skip = _gguf_plan(ctx, model)
        ev = _RunEvaluation.of(ctx)
        check = _MergeCheck.before_training(ctx, model, ev.records)
        results = ev.run(Variant("base", model=model, tokenizer=tokenizer), resume, timer)
        peft_model = train(ctx, model)
        if not rundir.main:
            return rundir.final
        results.add(ev.run(Variant("tuned", model=peft_model, tokenizer=tokenizer), reuse, timer))
        check.merge(ctx, peft_model)
        if gguf_skip is None:
            results.add(_edge(ctx, ev))
        comparisons = write_run_comparisons(stage / "eval", results, ev.settings)
        if "compare_gguf" in comparisons:
            write_pick(stage, cfg.export.quality_budget_pp, cfg.export.quality_metric)
        _charts(stage, results, comparisons)
        finish(ctx)
    return rundir.final


@dataclass
class _Run:
    """What every stage of one run needs: the config, where it writes, the base model's
    files and tokenizer, the prepared data, and how it was started."""

    cfg: RunConfig
    rundir: RunDir
    source: ModelSource
    tokenizer: Any
    data: PreparedData
    timer: Timer
    progress: bool
    resume: bool  # --resume was given
    reuse: bool  # ... and the interrupted run had finished training: reuse what followed
    fingerprint: str
    synth: SynthOutput | None = None  # the generated dataset, when the config has synth

    @property
    def stage(self) -> Path:
        return self.rundir.stage


def _check_hardware(cfg: RunConfig) -> None:
    import torch

    if cfg.lora.quantize == "nf4" and not torch.cuda.is_available():
        raise SpecializeError(
            "QLoRA (4-bit NF4 through bitsandbytes) needs a CUDA GPU; none is available here",
            field="lora.quantize",
        )


def _load_model(ctx: _Run) -> Any:
    with ctx.timer.stage("load_model"):
        model = load_model(ctx.source, ctx.cfg.model.dtype, ctx.cfg.lora.quantize)
    tied = is_tied(model)
    log.info(
        "model: %s (%s, tied embeddings: %s)", ctx.source.describe(), type(model).__name__, tied
    )
    return model


def _gguf_plan(ctx: _Run, model: Any) -> str | None:
    """Before training: why the GGUF stage cannot run (None: it will), said now, not after
    an hour of training."""
    from specialize.export.edge import gguf_plan

    return gguf_plan(ctx.cfg.export, model.config) if ctx.rundir.main else "not the main process"


# ---------------------------------------------------------------------------------- data


def _synthesize(
    cfg: RunConfig, source: ModelSource, tokenizer: Any, timer: Timer, progress: bool
) -> tuple[SynthOutput | None, Any]:
    """The synth stage (configs with ``synth``): documents and catalog checked before any
    model loads, then generated by the teacher into ``<output_dir>/<name>.synth/``. A teacher
    that is the base model itself is loaded once, as the base model; returned for reuse."""
    if cfg.synth is None:
        return None, None
    from specialize.data.synth_run import check_sources, run_synth
    from specialize.data.teacher import uses_base_model

    sources = check_sources(cfg, tokenizer)
    model = None
    if uses_base_model(cfg.synth, cfg.model.base) and cfg.lora.quantize == "none":
        with timer.stage("load_model"):
            model = load_model(source, cfg.model.dtype, cfg.lora.quantize)
    with timer.stage("synth"):
        out = run_synth(cfg, sources=sources, model=model, tokenizer=tokenizer, progress=progress)
    if not out.records:
        raise SpecializeError(
            "the synth stage kept no records (see synth_stats.json)", path=out.out_dir
        )
    return out, model


def write_data(
    stage: Path, cfg: RunConfig, data: PreparedData, synth: SynthOutput | None = None
) -> None:
    """The resolved config and the data stage's files: splits, stats, leakage report, and
    with synth the generation's stats and samples (``data/``) and task catalog (``tasks.json``:
    the exact instructions and schemas the typed API must use)."""
    stats = data.stats(cfg)
    write_text(stage / "config.yaml", yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    if synth is not None:
        write_json(stage / "data" / "synth_stats.json", synth.stats)
        write_jsonl(stage / "data" / "synth_samples.jsonl", synth.samples)
        write_json(stage / "tasks.json", synth.catalog.to_json())
    for name, recs in data.splits.items():
        write_jsonl(stage / "data" / f"{name}.jsonl", recs)
    write_json(stage / "data" / "stats.json", stats)
    write_json(stage / "data" / "leakage.json", data.leakage)
    log.info(
        "data: %d records -> train %d, validation %d, test %d; leakage: %d exact, %d near",
        stats["records"],
        *stats["splits"].values(),
        stats["leakage"]["exact"],
        stats["leakage"]["near"],
    )


def training_fingerprint(cfg: RunConfig, data: PreparedData) -> str:
    """What a checkpoint must match to be resumed: model, data, format, LoRA, optimisation."""
    train_cfg = cfg.train.model_dump(exclude={"log_every", "eval_every", "checkpoint_every"})
    return fingerprint(
        {
            "model": cfg.model.model_dump(),
            "chat": cfg.chat.model_dump(),
            "lora": cfg.lora.model_dump(),
            "train": train_cfg,
            "data": [e.id for e in data.rendered()["train"]],
        }
    )


# ---------------------------------------------------------------------------- evaluation


@dataclass
class _RunEvaluation:
    """The run's evaluation: its records, settings and BERTScore model; rank 0 only."""

    records: list[Record]
    settings: EvalSettings
    out: Path
    enabled: bool
    progress: bool
    scorer: Any = None

    @classmethod
    def of(cls, ctx: _Run) -> _RunEvaluation:
        from specialize.evaluate.runner import make_bertscorer

        cfg, data, main = ctx.cfg, ctx.data, ctx.rundir.main
        records = data.eval_records(cfg.eval.limit)
        settings = EvalSettings(
            fmt=cfg.chat.format,
            max_new_tokens=cfg.eval.max_new_tokens,
            batch_size=cfg.eval.batch_size,
            mode=cfg.mode,
            max_seq_len=cfg.chat.max_seq_len,
            split=data.eval_split,
            breakdown_by=tuple(cfg.eval.breakdown_by),
            bootstrap=cfg.eval.bootstrap,
            seed=cfg.train.seed,
            catalog=ctx.synth.catalog if ctx.synth is not None else None,
        )
        scorer = None
        if cfg.mode == "sft" and cfg.eval.enabled and main:
            scorer = make_bertscorer(cfg.eval.bertscore, records)
        enabled = cfg.eval.enabled and bool(records) and main
        return cls(records, settings, ctx.stage / "eval", enabled, ctx.progress, scorer)

    def run(self, variant: Variant, reuse: bool, timer: Timer) -> EvalResults:
        """One variant into ``eval/<name>/`` (timed as ``eval_<name>`` unless reused)."""
        if not self.enabled:
            return EvalResults()
        done = reuse and (self.out / variant.name / "metrics.json").is_file()
        with nullcontext() if done else timer.stage(f"eval_{variant.name}"):
            return evaluate(
                [variant], self.records, self.settings, self.out,
                reuse=reuse, scorer=self.scorer, progress=self.progress,
            )  # fmt: skip


def _charts(stage: Path, results: EvalResults, comparisons: dict[str, dict[str, Any]]) -> None:
    """The base/tuned metrics chart (rendering lives in report/)."""
    from specialize.report.eval_report import metrics_chart

    if "compare" in comparisons:
        metrics = results.metrics(["base", "tuned"])
        metrics_chart(metrics, comparisons["compare"], stage / "plots" / "metrics.png")


# ------------------------------------------------------------------------------ training


def train(ctx: _Run, model: Any) -> Any:
    """LoRA training into ``adapter/``, or the finished adapter of an interrupted run;
    returns the adapted model."""
    if ctx.reuse:
        from specialize.evaluate.runner import with_adapter

        peft_model = with_adapter(model, ctx.stage / "adapter")
        history = read_json(ctx.stage / "train" / "history.json")
        log.info("training reused: the interrupted run had finished its adapter")
    else:
        with ctx.timer.stage("train"):
            peft_model, history = _fit(ctx, model)
    final = history["validation"][-1]["loss"] if history["validation"] else float("nan")
    log.info(
        "trained %d steps in %.1f s (%.0f tokens/s); %s",
        history["steps"],
        history["wall_s"],
        history["tokens_per_s"],
        "no validation split" if math.isnan(final) else f"final validation loss {final:.4f}",
    )
    return peft_model


# long: the training stage's steps in order (LoRA, setup, resume, fit, save, metadata), each
# one call or log line; split, the halves would only hand the same state to each other.
def _fit(ctx: _Run, model: Any) -> tuple[Any, dict[str, Any]]:
    from specialize.report.plots import loss_curve
    from specialize.train import loop
    from specialize.train.lora import apply_lora, parameter_counts

    cfg, stage, ckpt_dir = ctx.cfg, ctx.stage, ctx.rundir.checkpoints
    peft_model, targets = apply_lora(model, cfg.lora, cfg.train.seed)
    counts = parameter_counts(peft_model)
    write_json(stage / "train" / "adapted_modules.json", {"targets": targets, "parameters": counts})
    log.info(
        "trainable params: %s || all params: %s || trainable%%: %.4f",
        f"{counts['trainable']:,}",
        f"{counts['total']:,}",
        100 * counts["trainable"] / counts["total"],
    )
    examples = ctx.data.rendered()
    state = loop.setup(
        peft_model,
        training_rows(cfg, examples["train"]),
        examples["validation"],
        cfg.train,
        ctx.tokenizer.pad_token_id,
        cfg.eval.batch_size,
        checkpoint_dir=ckpt_dir if cfg.train.checkpoint_every else None,
        fingerprint=ctx.fingerprint,
    )
    if ctx.resume and cfg.train.checkpoint_every:
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
        history = loop.fit(state, ctx.progress)
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
            "base_files": ctx.source.describe(),
            "chat_format": cfg.chat.format,
            "lora": cfg.lora.model_dump(mode="json"),
            "targets": targets,
        },
    )
    write_json(stage / "train" / "history.json", history)
    loss_curve(history, stage / "plots" / "loss.png")
    ctx.rundir.mark_trained(ctx.fingerprint)
    return peft_model, history


# -------------------------------------------------------------------------------- export


@dataclass
class _MergeCheck:
    """Prompts and base-model logits taken before training, to check the merge against."""

    prompts: list[list[int]]
    base_logits: Any

    @classmethod
    def before_training(cls, ctx: _Run, model: Any, eval_records: list[Record]) -> _MergeCheck:
        from specialize.export.merge import logits_for

        cfg, data, n = ctx.cfg, ctx.data, ctx.cfg.export.check_prompts
        if cfg.mode == "cpt":  # the first tokens of held-out documents
            keep = {r["id"] for r in eval_records}
            held_out = data.rendered()[data.eval_split]
            pool = [e for e in held_out if e.id.rsplit("#", 1)[0] in keep]
            prompts = [e.input_ids[:64] for e in (pool or data.rendered()["train"])[:n]]
        else:
            recs = (eval_records or data.splits["train"])[:n]
            fmt = cfg.chat.format
            prompts = [render_prompt(r["messages"][:-1], ctx.tokenizer, fmt) for r in recs]
        return cls(prompts, logits_for(model, prompts))

    def merge(self, ctx: _Run, peft_model: Any) -> None:
        """Merge the adapter into ``merged/`` and prove it: its logits equal the adapter
        model's and differ from the base model's (or reuse a merge that passed)."""
        cfg = ctx.cfg
        if not cfg.export.merge:
            return
        check = _merge_done(ctx.stage) if ctx.reuse else None
        if check is not None:
            log.info("merged model reused from the interrupted run")
        else:
            with ctx.timer.stage("export"):
                check = self._merge(ctx, peft_model)
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

    def _merge(self, ctx: _Run, peft_model: Any) -> dict[str, Any]:
        import torch

        from specialize.export.merge import check_merged, logits_for, merge_and_save

        ex, merged = ctx.cfg.export, ctx.stage / "merged"
        check_dtype = getattr(torch, ex.check_dtype)
        peft_model.to(check_dtype)  # merge and compare in this precision
        adapter_logits = logits_for(peft_model, self.prompts)
        saved = ex.merged_dtype or ctx.cfg.model.dtype
        _, merged_logits = merge_and_save(peft_model, ctx.tokenizer, merged, saved, self.prompts)
        check = check_merged(
            merged,
            self.prompts,
            adapter_logits,
            self.base_logits,
            ex.atol,
            ex.rtol,
            check_dtype,
            merged_logits=merged_logits,
            saved_dtype=saved,
        )
        write_json(ctx.stage / "export" / "merge_check.json", check)
        return check


def _merge_done(stage: Path) -> dict[str, Any] | None:
    """The check of a merge that finished and passed (written after the folder), else None."""
    try:
        check = read_json(stage / "export" / "merge_check.json")
        done = (stage / "merged" / "config.json").is_file() and bool(check["passed"])
    except (OSError, ValueError, KeyError):
        return None
    return check if done else None


def _edge(ctx: _Run, ev: _RunEvaluation) -> EvalResults:
    """The GGUF stage; a llama.cpp crash names the stage and says how to go on."""
    from specialize.export.edge import export_edge

    cfg = ctx.cfg
    with ctx.timer.stage("gguf"):
        try:
            return export_edge(
                ctx.stage, cfg, ctx.source, ctx.tokenizer,
                ev.records if cfg.eval.enabled else [], ev.settings,
                evaluate_files=ev.enabled, scorer=ev.scorer, progress=ctx.progress,
                reuse=ctx.reuse,
            ).results  # fmt: skip
        except NativeCrash as e:
            raise NativeCrash(
                f"stage 'gguf': {e.message}; the finished stages are kept: rebuild "
                "llama.cpp (README: llama.cpp build) or set export.gguf: false, then "
                "rerun with --resume",
                path=e.path,
            ) from None


# -------------------------------------------------------------------------------- finish


def finish(ctx: _Run) -> None:
    """The environment, timings, model card and manifest: written last, from the files."""
    from specialize.report.card import write_card
    from specialize.report.manifest import write_manifest

    stage, cfg = ctx.stage, ctx.cfg
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
    write_json(stage / "timings.json", ctx.timer.as_dict())
    write_card(stage)
    inputs = {
        "config_sha256": sha256_file(stage / "config.yaml"),
        "data": {str(p): sha256_file(p) for p in data_files(ctx.data.path)},
        "base_model": {"spec": cfg.model.base, "files": ctx.source.describe()},
    }
    write_manifest(stage, inputs)
