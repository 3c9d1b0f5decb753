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

``export/sizes.json`` lists the bytes of every artifact (base and merged weights, the
adapter folder, each GGUF with bits per weight). Each GGUF is written under a temporary name
and renamed when complete, so an interrupted export never leaves a half-written file under
its final name.
"""

from __future__ import annotations

import logging
from functools import cached_property
from pathlib import Path
from typing import Any

from specialize.errors import SpecializeError
from specialize.io import read_json, read_jsonl, write_json

log = logging.getLogger("specialize")

DEFAULT_TYPES = ("q8_0", "q4_k_m")
LOGIT_TEXTS = 32  # held-out conversations for top-1/KL: ~1,500 positions on the bundled run
ANSWER_TOKENS = 32
DOC_TOKENS = 256  # CPT runs: the first tokens of each held-out document


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt")


def _folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def weight_bytes(path: Path) -> int:
    """Bytes of a model's weights: a weight file, or the weight files of a folder (not its
    tokenizer and configs, so base, merged and GGUF sizes compare like with like)."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.suffix in WEIGHT_SUFFIXES)


def _merged(run: Path, meta: dict[str, Any]) -> Path:
    merged = run / "merged"
    if (merged / "config.json").is_file():
        return merged
    from specialize.evaluate.runner import with_adapter
    from specialize.export.merge import merge_and_save
    from specialize.models.load import load_model, load_tokenizer, resolve

    if "base_model" not in meta:
        raise SpecializeError(
            "no merged/ folder, and adapter/specialize.json names no base model to merge into",
            path=run,
        )
    source = resolve(meta["base_model"])
    tuned = with_adapter(load_model(source, "float32"), run / "adapter")
    merge_and_save(tuned, load_tokenizer(source), merged, "float32")  # GGUF converts from it
    return merged


class MergedModel:
    """The merged folder's tokenizer and float32 model, each loaded on first use and then
    shared: the importance matrix and the round-trip checks read the same model."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @cached_property
    def tokenizer(self) -> Any:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(self.path)

    @cached_property
    def model(self) -> Any:
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(self.path, dtype="float32").eval()


def importance_matrix(
    run: Path, merged: MergedModel, meta: dict[str, Any], tokens: int, reuse: bool
) -> dict[str, Any]:
    """The importance matrix of ``gguf/imatrix.dat``: reused when resuming, else computed
    from the first ``tokens`` tokens of ``data/train.jsonl`` through the merged model."""
    from specialize.export.gguf import imatrix as im
    from specialize.models.chat import render_conversation

    path = run / "gguf" / "imatrix.dat"
    if reuse and path.is_file():
        return im.read_imatrix(path)
    split = run / "data" / "train.jsonl"
    records = read_jsonl(split) if split.is_file() else []
    if not records:
        raise SpecializeError(
            "the run saved no training records to compute an importance matrix from "
            "(set export.imatrix_tokens: 0 to quantize without one)",
            path=run,
        )
    tok = merged.tokenizer
    fmt = meta.get("chat_format", "chatml")
    rows, total = [], 0
    for r in records:
        if total >= tokens:
            break
        if "messages" in r:
            ids = render_conversation(r["messages"], tok, fmt).input_ids
        else:
            ids = tok(r["text"], add_special_tokens=False)["input_ids"]
        rows.append(ids)
        total += len(ids)
    log.info("GGUF: importance matrix from %d training tokens", min(total, tokens))
    result = im.compute_imatrix(merged.model, rows, max_tokens=tokens, dataset=str(split.name))
    im.write_imatrix(result, path)
    # quantize with what the file holds, so a resumed export or `llama-quantize --imatrix`
    # rounds exactly as this one (the file stores values x chunks, not bit-exact back)
    return im.read_imatrix(path)


def export_run(
    run: Path,
    types: tuple[str, ...] = DEFAULT_TYPES,
    checks: bool = True,
    n_check: int = 4,
    name: str | None = None,
    reuse: bool = False,
    imatrix_tokens: int = 0,
) -> dict[str, Any]:
    """Write ``RUN/gguf/<name>-<type>.gguf`` (``name`` defaults to the run folder's) and the
    check and size reports; returns the report. ``reuse`` keeps GGUF files an interrupted
    export finished (each is renamed into place only when complete, and its facts are in
    ``export/gguf_files.json``). ``imatrix_tokens`` > 0: the K-quants are weighted by an
    importance matrix from that many training tokens (``gguf/imatrix.dat``)."""
    from specialize.export import gguf as g

    if not (run / "adapter" / "adapter_config.json").is_file():
        raise SpecializeError("not a run with an adapter (adapter/adapter_config.json)", path=run)
    meta_path = run / "adapter" / "specialize.json"
    meta = read_json(meta_path) if meta_path.is_file() else {}
    merged = MergedModel(_merged(run, meta))
    out = run / "gguf"
    name = name or run.name
    facts = run / "export" / "gguf_files.json"
    done = read_json(facts) if reuse and facts.is_file() else {}
    files: dict[str, dict[str, Any]] = {}
    f16 = out / f"{name}-f16.gguf"
    imatrix = None
    if imatrix_tokens and any("_k" in t for t in types):
        imatrix = importance_matrix(run, merged, meta, imatrix_tokens, reuse)
    else:  # a matrix of an earlier export would suggest these files used it
        (out / "imatrix.dat").unlink(missing_ok=True)
    for t in ("f16", *types):
        path = out / f"{name}-{t}.gguf"
        if t in done and path.is_file() and path.stat().st_size == done[t]["bytes"]:
            files[t] = done[t]
            log.info("GGUF: %s reused from the interrupted run", path.name)
            continue
        if t == "f16":
            log.info("GGUF: converting %s -> %s", merged.path, f16)
            files[t] = g.convert_to_gguf(merged.path, f16, "f16")
            files[t]["bits_per_weight"] = files[t]["bytes"] * 8 / max(1, files[t]["params"])
        else:
            log.info("GGUF: quantizing to %s", t.upper())
            files[t] = g.quantize(f16, path, t, imatrix=imatrix if "_k" in t else None)
        write_json(facts, files)  # after each file: what a resumed export may keep
    base_files = Path(str(meta.get("base_files", "")))
    sizes: dict[str, Any] = {}
    if base_files.exists():
        sizes |= {"base": weight_bytes(base_files), "base_path": str(base_files)}
    sizes |= {
        "adapter": _folder_bytes(run / "adapter"),
        "merged": weight_bytes(merged.path),
        "gguf": {
            t: {k: f[k] for k in ("bytes", "bits_per_weight") if k in f} for t, f in files.items()
        },
    }
    write_json(run / "export" / "sizes.json", sizes)
    report: dict[str, Any] = {"files": {t: str(Path(f["path"]).name) for t, f in files.items()}}
    if checks:
        fmt = meta.get("chat_format", "chatml")
        report["checks"] = _checks(run, merged, files, n_check, fmt)
        write_json(run / "export" / "gguf_checks.json", report)
        failed = [t for t, c in report["checks"].items() if not c.get("passed", True)]
        if failed:
            raise SpecializeError(
                f"GGUF round-trip check failed for {', '.join(failed)} "
                f"(details: {run / 'export' / 'gguf_checks.json'})"
            )
    return report


def _checks(
    run: Path, merged: MergedModel, files: dict[str, Any], n: int, fmt: str
) -> dict[str, Any]:
    """Template and stop check on the F16 file; logits on up to ``LOGIT_TEXTS`` held-out
    conversations and greedy answers on ``n`` prompts for every file. A CPT run has documents,
    not conversations: logits on their first ``DOC_TOKENS`` tokens, greedy continuations of
    their first quarter, and no template check (it trained none)."""
    from specialize.export import gguf as g
    from specialize.models.chat import render_conversation

    tok, model = merged.tokenizer, merged.model
    split = run / "data" / "test.jsonl"
    if not split.is_file():
        split = run / "data" / "validation.jsonl"
    records = read_jsonl(split)[: max(n, LOGIT_TEXTS)] if split.is_file() else []
    if not records:
        raise SpecializeError("the run saved no test records to check the GGUF on", path=run)
    out: dict[str, Any] = {}
    if "messages" in records[0]:
        prompts: list[Any] = [r["messages"][:-1] for r in records[:n]]
        # Token ids, not text: special markers must be the special tokens on both sides.
        texts = [render_conversation(r["messages"], tok, fmt).input_ids for r in records]
        out["template"] = g.check_template(tok, files["f16"]["path"], prompts)
    else:  # a CPT run: held-out documents, tokenized as training saw them
        texts = [
            tok(r["text"], add_special_tokens=False)["input_ids"][:DOC_TOKENS] for r in records
        ]
        texts = [t for t in texts if len(t) > 1]
        prompts = [t[: DOC_TOKENS // 4] for t in texts[:n]]  # continue each document
    reference = g.hf_greedy_answers(model, tok, prompts, ANSWER_TOKENS)
    hf_logits: dict[tuple[int, ...], Any] = {}  # computed once, compared with every file
    for t, f in files.items():
        logits = g.check_logits(
            model, f["path"], texts, min_top1=0.99 if t == "f16" else 0.0, reference=hf_logits
        )
        answers = g.check_answers(
            model, tok, f["path"], prompts, ANSWER_TOKENS, reference=reference
        )
        out[t] = {
            "logits": logits,
            "answers": answers,
            # F16 must reproduce the merged model's next tokens; answers can part at a near-tie
            # (one flipped token changes the rest), so they are reported, as is every number
            # of the quantized files.
            "passed": bool(logits["passed"]) if t == "f16" else True,
        }
        log.info(
            "GGUF %s: top-1 agreement %.1f%% over %d positions, mean KL %.2e, "
            "identical answers %d/%d",
            t.upper(),
            100 * logits["top1_agreement"],
            logits["positions"],
            logits["kl_mean"],
            answers["identical"],
            answers["prompts"],
        )
    return out
