"""The main job's edge-export stage: GGUF files, their proof, their scores and their speed.

After the merge, ``specialize run`` hands the staging folder to :func:`export_edge`, which

1. converts ``merged/`` to an F16 GGUF and quantizes it (``export.gguf_types``), running the
   round-trip checks of :mod:`specialize.export.export_run` (template, stop token, top-1/KL,
   identical answers) and recording sizes;
2. measures CPU tokens/s of the base model, the base model with the adapter, the merged
   model and each GGUF (``export/speed.json``);
3. evaluates each quantized GGUF through llama.cpp on the same records as base and tuned
   (``eval/gguf-<type>/``) and compares each with the tuned model it came from, paired
   bootstrap CIs included (``eval/compare_gguf.json``).

:func:`gguf_plan` decides before training whether this can run at all, so a missing
llama-cpp-python or an unsupported architecture is reported in the first seconds of a run,
not after it has trained.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Any

from specialize.errors import SpecializeError
from specialize.io import read_json, read_jsonl, write_json, write_jsonl

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


def export_edge(
    run: Path,
    cfg: Any,
    source: Any,
    tokenizer: Any,
    records: list[dict[str, Any]],
    preds: dict[str, list[dict[str, Any]]],
    metrics: dict[str, dict[str, Any]],
    scorer: Any = None,
    progress: bool = True,
    reuse: bool = False,
) -> dict[str, Any]:
    """GGUF export + checks, speed and quantized evaluation into ``run`` (a staging folder with
    adapter/, merged/ and data/). Adds the GGUF variants to ``preds``/``metrics``.

    ``reuse`` (``specialize run --resume``) keeps the GGUF files and the quantized evaluations
    an interrupted run finished; checks and speed are measured again (seconds)."""
    from specialize.evaluate.evaluation import compare_variants, evaluate_variant, side_by_side
    from specialize.export.export_run import export_run
    from specialize.export.gguf import GGUFBackend
    from specialize.models.chat import render_prompt

    ex = cfg.export
    report = export_run(
        run, tuple(ex.gguf_types), checks=True, n_check=ex.check_prompts, name=cfg.name,
        reuse=reuse,
    )  # fmt: skip
    paths = {t: str(run / "gguf" / name) for t, name in report["files"].items()}

    if ex.speed_tokens and records:
        if cfg.mode == "sft":
            prompt = render_prompt(records[0]["messages"][:-1], tokenizer, cfg.chat.format)
        else:  # continue the first held-out document
            prompt = tokenizer(records[0]["text"], add_special_tokens=False)["input_ids"][:64]
        speed = measure_speed(run, source, prompt, paths, ex.speed_tokens)
        write_json(run / "export" / "speed.json", speed)

    if not (ex.gguf_eval and records and cfg.mode == "sft" and "tuned" in preds):
        return report
    names = []
    for t in ex.gguf_types:
        name = f"gguf-{t}"
        names.append(name)
        done = run / "eval" / name / "metrics.json"
        if reuse and done.is_file():
            preds[name] = read_jsonl(run / "eval" / name / "predictions.jsonl")
            metrics[name] = read_json(done)
            log.info("%s evaluation reused from the interrupted run", name)
            continue
        preds[name], metrics[name] = evaluate_variant(
            None,
            tokenizer,
            records,
            cfg.chat.format,
            cfg.eval.max_new_tokens,
            cfg.eval.batch_size,
            name,
            progress,
            backend=GGUFBackend(paths[t]),
            bertscorer=scorer,
        )
        write_jsonl(run / "eval" / name / "predictions.jsonl", preds[name])
        write_json(run / "eval" / name / "metrics.json", metrics[name])
    vs_tuned = compare_variants(
        {n: preds[n] for n in ["tuned", *names]},
        cfg.eval.breakdown_by,
        cfg.eval.bootstrap,
        cfg.train.seed,
    )
    write_json(run / "eval" / "compare_gguf.json", vs_tuned)
    write_jsonl(run / "eval" / "side_by_side.jsonl", side_by_side(preds))
    for n in names:
        d = vs_tuned["vs_reference"][n]
        key = "f1" if "f1" in d else next(iter(d), None)
        if key:
            log.info(
                "%s %s %.4f vs tuned %.4f (delta %+.4f, 95%% CI [%+.4f, %+.4f])",
                n,
                key,
                metrics[n][key],
                metrics["tuned"][key],
                d[key]["delta"],
                d[key]["ci_low"],
                d[key]["ci_high"],
            )
    return report
