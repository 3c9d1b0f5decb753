"""The main job's edge-export stage: GGUF files, their proof, their scores and their speed.

After the merge, ``specialize run`` hands the staging folder to :func:`export_edge`, which

1. converts ``merged/`` to an F16 GGUF and quantizes it (``export.gguf_types``), running the
   round-trip checks of :mod:`specialize.export.export_run` (template, stop token, top-1/KL,
   identical answers) and recording sizes;
2. measures CPU tokens/s of the base model, the base model with the adapter, the merged
   model and each GGUF (``export/speed.json``);
3. evaluates each quantized GGUF through llama.cpp on the same records as base and tuned
   (``eval/gguf-<type>/``, through the evaluation stage); the run compares each with the tuned
   model it came from (``eval/compare_gguf.json``, :mod:`specialize.evaluate.compare`).

:func:`gguf_plan` decides before training whether this can run at all, so a missing
llama-cpp-python or an unsupported architecture is reported in the first seconds of a run,
not after it has trained.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

from specialize.config import RunConfig
from specialize.data.read import Record
from specialize.errors import SpecializeError
from specialize.evaluate.stage import EvalResults, EvalSettings, Variant, evaluate
from specialize.io import write_json
from specialize.models.load import ModelSource

log = logging.getLogger("specialize")


def gguf_plan(export_cfg: Any, model_config: Any) -> str | None:
    """None when GGUF export will run; else why not. ``gguf: true`` turns a reason into an
    error (raised before training), ``gguf: auto`` logs it, ``gguf: false`` is quiet."""
    from specialize.export.gguf import LLAMA_CPP_PIP, arch_spec

    if export_cfg.gguf is False:
        return "export.gguf is false"
    reason = None
    if not export_cfg.merge:
        reason = "export.merge is false (GGUF is converted from the merged model)"
    else:
        try:
            arch_spec(model_config)
        except SpecializeError as e:
            reason = e.message
    if reason is None and importlib.util.find_spec("llama_cpp") is None:
        reason = f"llama-cpp-python is not installed ({LLAMA_CPP_PIP})"
    if reason and export_cfg.gguf is True:
        raise SpecializeError(
            f"GGUF export is not possible: {reason}; set export.gguf: false to skip it",
            field="export.gguf",
        )
    if reason:
        log.warning("GGUF export will be skipped: %s", reason)
    return reason


def measure_speed(
    run: Path, source: Any, prompt_ids: list[int], gguf_files: dict[str, str], new_tokens: int
) -> dict[str, Any]:
    """tokens/s of base, base + adapter, merged (PyTorch float32) and each GGUF (llama.cpp)."""
    from transformers import AutoModelForCausalLM

    from specialize.evaluate.runner import with_adapter
    from specialize.export.speed import gguf_tokens_per_s, hf_tokens_per_s
    from specialize.models.load import load_model

    out: dict[str, Any] = {"prompt_tokens": len(prompt_ids), "new_tokens": new_tokens}
    rows: dict[str, Any] = {}
    prompts = [prompt_ids]
    base = load_model(source, "float32")
    rows["base"] = hf_tokens_per_s(base, prompts, new_tokens)
    rows["adapter"] = hf_tokens_per_s(with_adapter(base, run / "adapter"), prompts, new_tokens)
    del base
    merged = AutoModelForCausalLM.from_pretrained(run / "merged", dtype="float32")
    rows["merged"] = hf_tokens_per_s(merged, prompts, new_tokens)
    del merged
    for kind, path in gguf_files.items():
        rows[f"gguf-{kind}"] = gguf_tokens_per_s(path, prompts, new_tokens)
    for name, r in rows.items():
        log.info("speed %s: %.1f tokens/s (%s)", name, r["tokens_per_s"], r["engine"])
    out["artifacts"] = rows
    return out


@dataclass
class EdgeExport:
    """What the GGUF stage produced: the export report (files, checks, sizes) and the
    evaluations of the quantized files (``gguf-<type>`` variants, in ``gguf_types`` order)."""

    report: dict[str, Any]
    results: EvalResults


def export_edge(
    run: Path,
    cfg: RunConfig,
    source: ModelSource,
    tokenizer: Any,
    records: list[Record],
    settings: EvalSettings,
    *,
    evaluate_files: bool = True,
    scorer: Any = None,
    progress: bool = True,
    reuse: bool = False,
) -> EdgeExport:
    """GGUF export + checks, speed and quantized evaluation into ``run`` (a staging folder with
    adapter/, merged/ and data/). ``records`` are the evaluated records (the first one's prompt
    is also the speed prompt); ``evaluate_files`` is false when the run evaluated no tuned
    model to compare the files with.

    ``reuse`` (``specialize run --resume``) keeps the GGUF files and the quantized evaluations
    an interrupted run finished; checks and speed are measured again (seconds)."""
    from specialize.export.export_run import export_run
    from specialize.models.chat import render_prompt

    ex = cfg.export
    report = export_run(
        run, tuple(ex.gguf_types), checks=True, n_check=ex.check_prompts, name=cfg.name,
        reuse=reuse, imatrix_tokens=ex.imatrix_tokens,
    )  # fmt: skip
    paths = {t: str(run / "gguf" / name) for t, name in report["files"].items()}

    if ex.speed_tokens and records:
        if cfg.mode == "sft":
            prompt = render_prompt(records[0]["messages"][:-1], tokenizer, cfg.chat.format)
        else:  # continue the first held-out document
            prompt = tokenizer(records[0]["text"], add_special_tokens=False)["input_ids"][:64]
        speed = measure_speed(run, source, prompt, paths, ex.speed_tokens)
        write_json(run / "export" / "speed.json", speed)

    if not (ex.gguf_eval and records and cfg.mode == "sft" and evaluate_files):
        return EdgeExport(report, EvalResults())
    results = _evaluate_files(run, cfg, paths, records, settings, scorer, progress, reuse)
    return EdgeExport(report, results)


def _evaluate_files(
    run: Path,
    cfg: RunConfig,
    paths: dict[str, str],
    records: list[Record],
    settings: EvalSettings,
    scorer: Any,
    progress: bool,
    reuse: bool,
) -> EvalResults:
    """Each quantized file answers the run's records through llama.cpp (``eval/gguf-<type>/``).

    One file at a time: each llama.cpp child is started when its variant is evaluated and
    ended before the next. Their ``metrics.json`` carry no ``split`` (as they always have; the
    run's split is in ``compare.json``)."""
    from specialize.infer.llamacpp import LlamaCppBackend

    variants = [
        Variant(f"gguf-{t}", open_backend=partial(LlamaCppBackend, paths[t]))
        for t in cfg.export.gguf_types
    ]
    return evaluate(
        variants, records, replace(settings, split=None), run / "eval",
        reuse=reuse, scorer=scorer, progress=progress,
    )  # fmt: skip
