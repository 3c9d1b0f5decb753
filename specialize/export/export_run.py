"""``specialize export RUN_DIR``: merged model -> GGUF (F16) -> quantized GGUFs, with proof.

The run's merged folder (written by ``specialize run``; merged here from the adapter if it is
missing) is converted to an F16 GGUF and quantized with llama.cpp (Q8_0 and Q4_K_M by
default). Every GGUF is then checked against the merged Hugging Face model, and the results
are written to ``export/gguf_checks.json``:

- the template check (HF chat template and the GGUF's own template give identical ids;
  generation stops at end-of-turn), once, on the F16 file;
- next-token top-1 agreement and mean KL on held-out conversations (F16 must agree on at
  least 99% of positions; quantized types are reported);
- the share of identical greedy answers on test prompts.

``export/sizes.json`` lists the bytes of every artifact (adapter, merged, each GGUF, with
bits per weight). Each GGUF is written under a temporary name and renamed when complete, so
an interrupted export never leaves a half-written file under its final name.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from specialize.errors import SpecializeError
from specialize.io import read_json, read_jsonl, write_json

log = logging.getLogger("specialize")

DEFAULT_TYPES = ("q8_0", "q4_k_m")


def _folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _merged(run: Path) -> Path:
    merged = run / "merged"
    if (merged / "config.json").is_file():
        return merged
    from specialize.evaluate.runner import with_adapter
    from specialize.export.merge import merge_and_save
    from specialize.models.load import load_model, load_tokenizer, resolve

    meta = read_json(run / "adapter" / "specialize.json")
    source = resolve(meta["base_model"])
    tuned = with_adapter(load_model(source, "float32"), run / "adapter")
    merge_and_save(tuned, load_tokenizer(source), merged, "float32")
    return merged


def export_run(
    run: Path, types: tuple[str, ...] = DEFAULT_TYPES, checks: bool = True, n_check: int = 4
) -> dict[str, Any]:
    """Write ``RUN/gguf/*.gguf`` and the check and size reports; returns the report."""
    from specialize.export import gguf as g

    if not (run / "adapter" / "adapter_config.json").is_file():
        raise SpecializeError("not a run with an adapter (adapter/adapter_config.json)", path=run)
    merged = _merged(run)
    out = run / "gguf"
    name = run.name
    files: dict[str, dict[str, Any]] = {}
    f16 = out / f"{name}-f16.gguf"
    log.info("GGUF: converting %s -> %s", merged, f16)
    files["f16"] = g.convert_to_gguf(merged, f16, "f16")
    for t in types:
        path = out / f"{name}-{t}.gguf"
        log.info("GGUF: quantizing to %s", t.upper())
        files[t] = g.quantize(f16, path, t)
    sizes = {
        "adapter": _folder_bytes(run / "adapter"),
        "merged": _folder_bytes(merged),
        "gguf": {
            t: {k: f[k] for k in ("bytes", "bits_per_weight") if k in f} for t, f in files.items()
        },
    }
    write_json(run / "export" / "sizes.json", sizes)
    report: dict[str, Any] = {"files": {t: str(Path(f["path"]).name) for t, f in files.items()}}
    if checks:
        report["checks"] = _checks(run, merged, files, n_check)
        write_json(run / "export" / "gguf_checks.json", report)
        failed = [t for t, c in report["checks"].items() if not c.get("passed", True)]
        if failed:
            raise SpecializeError(
                f"GGUF round-trip check failed for {', '.join(failed)} "
                f"(details: {run / 'export' / 'gguf_checks.json'})"
            )
    return report


def _checks(run: Path, merged: Path, files: dict[str, Any], n: int) -> dict[str, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from specialize.export import gguf as g

    tok = AutoTokenizer.from_pretrained(merged)
    model = AutoModelForCausalLM.from_pretrained(merged, dtype="float32").eval()
    split = run / "data" / "test.jsonl"
    if not split.is_file():
        split = run / "data" / "validation.jsonl"
    records = read_jsonl(split)[:n] if split.is_file() else []
    if not records:
        raise SpecializeError("the run saved no test records to check the GGUF on", path=run)
    from specialize.models.chat import render_conversation

    fmt = read_json(run / "adapter" / "specialize.json").get("chat_format", "chatml")
    prompts = [r["messages"][:-1] for r in records]
    # Token ids, not text: special markers must be the special tokens on both sides.
    texts = [render_conversation(r["messages"], tok, fmt).input_ids for r in records]
    out: dict[str, Any] = {}
    out["template"] = g.check_template(tok, files["f16"]["path"], prompts)
    for t, f in files.items():
        logits = g.check_logits(model, f["path"], texts, min_top1=0.99 if t == "f16" else 0.0)
        answers = g.check_answers(model, tok, f["path"], prompts, 32)
        out[t] = {
            "logits": logits,
            "answers": answers,
            "passed": bool(logits["passed"]) if t == "f16" else True,
        }
        log.info(
            "GGUF %s: top-1 agreement %.1f%%, mean KL %.2e, identical answers %.0f%%",
            t.upper(),
            100 * logits["top1_agreement"],
            logits["kl_mean"],
            100 * answers["share_identical"],
        )
    return out
