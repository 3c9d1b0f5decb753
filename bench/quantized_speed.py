"""Edge cost and benefit: every quantized type in llama.cpp vs the float32 HF model.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/quantized_speed.py --json bench/quantized_speed.json
    HF_HUB_OFFLINE=1 .venv/bin/python bench/quantized_speed.py --run runs/space-qa --records 40

Needs a finished run with a merged model and its F16 GGUF: ``make run`` (or ``specialize
run``) writes ``runs/space-qa/`` with both; ``specialize export RUN`` adds them to an older
run. From the run's F16 file, every ``--types`` type is quantized into a temporary folder by
``specialize.export.gguf.quantize``: once without and, for the K-quants, once with the run's
importance matrix (``gguf/imatrix.dat``, computed from its training split if missing). Then,
in one process, one after the other, on the same CPU threads:

1. **speed**: greedy generation of ``--new-tokens`` tokens, one sequence, after each of the
   first ``--prompts`` test prompts; end-of-turn may not end a run early, so both engines do
   the same work. The merged model runs in PyTorch float32 (``model.generate``), every GGUF
   (F16 too) in llama.cpp (llama-cpp-python). Each engine is warmed up first; the figure is
   the median tokens/s over ``--repeats`` runs per prompt, prefill included
   (``specialize.export.speed``).
2. **quality**: all answer the run's test records (``--records``, default all) greedily with
   the run's ``eval.max_new_tokens``: the HF model through specialize's batched engine, each
   GGUF through llama.cpp with its own chat template. Token F1 (SQuAD v1.1 normalisation) of
   each and the paired-bootstrap 95% CI of its difference from float32.

Prints a table and ``--json PATH`` writes ``{"hf_fp32_tokens_per_s", "q4_k_m_tokens_per_s",
"ratio", "metric_delta_pp", "metric_delta_ci95_pp", "types": {label: {"bytes",
"bits_per_weight", "tokens_per_s", "speedup_vs_fp32", "f1", "delta_pp", "ci95_pp",
"top1_agreement", "kl_mean"}}, ...}``: the last two are next-token agreement with float32
over every position of 32 test conversations, much less noisy than greedy F1.
The top-level Q4_K_M figures are of the file a run ships (with the importance matrix);
``metric_delta_pp`` is (F1 of that file - F1 of float32) x 100, in percentage points; negative
means quantization cost quality.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(ROOT))


def quantized_files(run: Path, name: str, types: list[str], out: Path) -> dict[str, Any]:
    """Every type quantized from the run's F16 file, without and (K-quants) with the run's
    importance matrix (``gguf/imatrix.dat``, computed from its training split if missing):
    label -> ``specialize.export.gguf.quantize`` facts."""
    from specialize.export.export_run import MergedModel, importance_matrix
    from specialize.export.gguf import quantize
    from specialize.io import read_json

    meta_path = run / "adapter" / "specialize.json"
    meta = read_json(meta_path) if meta_path.is_file() else {}
    imatrix = importance_matrix(run, MergedModel(run / "merged"), meta, 32768, reuse=True)
    f16 = run / "gguf" / f"{name}-f16.gguf"
    files = {}
    for t in types:
        for weighted in (False, True) if "_k" in t else (False,):
            label = f"{t}+imatrix" if weighted else t
            path = out / f"{name}-{label.replace('+', '-')}.gguf"
            print(f"  quantizing {label}", flush=True)
            files[label] = quantize(f16, path, t, imatrix=imatrix if weighted else None)
    return files


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", type=Path, default=ROOT / "runs" / "space-qa")
    ap.add_argument("--types", default="q8_0,q6_k,q5_k_m,q4_k_m", help="quantized types")
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--prompts", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--records", type=int, default=0, help="test records scored (0 = all)")
    ap.add_argument("--bootstrap", type=int, default=2000)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)

    import tempfile

    import torch
    import yaml
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from specialize.export.speed import gguf_tokens_per_s, hf_tokens_per_s
    from specialize.infer.llama_process import cpu_threads
    from specialize.io import read_jsonl
    from specialize.models.chat import render_prompt

    run = args.run.resolve()
    cfg = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))
    name, fmt = cfg["name"], cfg["chat"]["format"]
    f16 = run / "gguf" / f"{name}-f16.gguf"
    if not (run / "merged" / "config.json").is_file() or not f16.is_file():
        raise SystemExit(
            f"{run}: needs merged/ and gguf/{name}-f16.gguf; run `make run` or "
            f"`specialize export {run}` first"
        )
    records = read_jsonl(run / "data" / "test.jsonl")
    records = records[: args.records] if args.records else records
    torch.set_num_threads(cpu_threads())
    tok = AutoTokenizer.from_pretrained(run / "merged")
    model = AutoModelForCausalLM.from_pretrained(run / "merged", dtype=torch.float32).eval()
    prompts = [render_prompt(r["messages"][:-1], tok, fmt) for r in records[: args.prompts]]
    with tempfile.TemporaryDirectory(prefix="quantized-bench-") as tmp:
        files = quantized_files(run, name, args.types.split(","), Path(tmp))
        paths = {"f16": f16} | {k: Path(f["path"]) for k, f in files.items()}
        print(f"speed: {args.new_tokens} new tokens x {len(prompts)} prompts x {args.repeats}")
        speed: dict[str, Any] = {}
        speed["hf_fp32"] = hf_tokens_per_s(model, prompts, args.new_tokens, args.repeats)
        print(f"  HF float32 (PyTorch): {speed['hf_fp32']['tokens_per_s']:.1f} tokens/s")
        for label, path in paths.items():
            speed[label] = gguf_tokens_per_s(path, prompts, args.new_tokens, args.repeats)
            print(f"  GGUF {label} (llama.cpp): {speed[label]['tokens_per_s']:.1f} tokens/s")
        t0 = time.perf_counter()
        quality = score(model, tok, paths, files, records, cfg, args.bootstrap)
        agreement(model, tok, fmt, paths, files, records, quality)
    result = summary(speed, quality, files, records, run, time.perf_counter() - t0)
    print(table(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.json}")
    return 0


def score(
    model: Any,
    tok: Any,
    paths: dict[str, Path],
    files: dict[str, Any],
    records: list[Any],
    cfg: dict[str, Any],
    bootstrap: int,
) -> dict[str, Any]:
    """Token F1 of the float32 model and of every quantized file on the same records, and
    each file's paired-bootstrap difference from float32."""
    from functools import partial

    from specialize.evaluate.compare import compare_variants
    from specialize.evaluate.stage import EvalSettings, Variant, evaluate
    from specialize.infer.llama_process import cpu_threads
    from specialize.infer.llamacpp import LlamaCppBackend

    print(f"quality: {len(records)} test records, token F1, {1 + len(files)} variants")
    settings = EvalSettings(
        fmt=cfg["chat"]["format"],
        max_new_tokens=int(cfg["eval"]["max_new_tokens"]),
        batch_size=int(cfg["eval"]["batch_size"]),
        loglik=False,
    )
    variants = [Variant("hf_fp32", model=model, tokenizer=tok)]
    variants += [
        Variant(label, open_backend=partial(LlamaCppBackend, paths[label], n_threads=cpu_threads()))
        for label in files
    ]
    results = evaluate(variants, records, settings)
    metrics = results.metrics()
    comp = compare_variants(results.predictions(), [], bootstrap, 17)["vs_reference"]
    out = {"hf_fp32": {"f1": metrics["hf_fp32"]["f1"]}}
    for label in files:
        d = comp[label]["f1"]
        out[label] = {
            "f1": metrics[label]["f1"],
            "delta_pp": 100 * d["delta"],
            "ci95_pp": [100 * d["ci_low"], 100 * d["ci_high"]],
        }
    return out


def agreement(
    model: Any,
    tok: Any,
    fmt: str,
    paths: dict[str, Path],
    files: dict[str, Any],
    records: list[Any],
    quality: dict[str, Any],
) -> None:
    """Next-token top-1 agreement and mean KL of each file against float32 over the first 32
    test conversations (every position): far less noisy than greedy F1 on a few hundred
    records, where one early token that flips changes a whole answer."""
    from specialize.export.gguf import check_logits
    from specialize.models.chat import render_conversation

    texts = [render_conversation(r["messages"], tok, fmt).input_ids for r in records[:32]]
    cache: dict[tuple[int, ...], Any] = {}
    for label in files:
        got = check_logits(model, paths[label], texts, min_top1=0.0, reference=cache)
        quality[label] |= {"top1_agreement": got["top1_agreement"], "kl_mean": got["kl_mean"]}


def summary(
    speed: dict[str, Any],
    quality: dict[str, Any],
    files: dict[str, Any],
    records: list[Any],
    run: Path,
    quality_s: float,
) -> dict[str, Any]:
    """The JSON: the shipped Q4_K_M (with the importance matrix) against float32 at the top,
    then every type with and without the matrix."""
    from specialize.infer.llama_process import cpu_threads
    from specialize.runinfo import hardware, installed_stack

    hf_tps = speed["hf_fp32"]["tokens_per_s"]
    main = "q4_k_m+imatrix" if "q4_k_m+imatrix" in files else "q4_k_m"
    per_type = {
        label: {
            "bytes": f["bytes"],
            "bits_per_weight": f["bits_per_weight"],
            "tokens_per_s": speed[label]["tokens_per_s"],
            "speedup_vs_fp32": speed[label]["tokens_per_s"] / hf_tps,
            **quality[label],
        }
        for label, f in files.items()
    }
    return {
        "hf_fp32_tokens_per_s": hf_tps,
        "q4_k_m_tokens_per_s": speed[main]["tokens_per_s"],
        "ratio": speed[main]["tokens_per_s"] / hf_tps,
        "q4_k_m_variant": main,
        "metric": "token F1 (SQuAD v1.1 normalisation), test split",
        "hf_fp32_f1": quality["hf_fp32"]["f1"],
        "q4_k_m_f1": quality[main]["f1"],
        "metric_delta_pp": quality[main]["delta_pp"],
        "metric_delta_ci95_pp": quality[main]["ci95_pp"],
        "types": per_type,
        "f16_tokens_per_s": speed["f16"]["tokens_per_s"],
        "records": len(records),
        "run": str(run),
        "quality_wall_s": quality_s,
        "threads": cpu_threads(),
        # Which llama.cpp build was measured: the flags decide which kernels run.
        "llama_cpp_build": installed_stack().get("llama_cpp_build"),
        "cpu": hardware()["cpu"],
    }


def table(result: dict[str, Any]) -> str:
    rows = [
        f"float32 (PyTorch): {result['hf_fp32_tokens_per_s']:.1f} tokens/s, "
        f"F1 {result['hf_fp32_f1']:.4f}",
        "type              MB   bits/w  tokens/s  speedup   F1      delta pp  95% CI"
        "            top-1   KL",
    ]
    for label, r in result["types"].items():
        rows.append(
            f"{label:15s} {r['bytes'] / 1e6:6.1f} {r['bits_per_weight']:7.2f} "
            f"{r['tokens_per_s']:9.1f} {r['speedup_vs_fp32']:7.2f}x  {r['f1']:.4f} "
            f"{r['delta_pp']:+8.2f}  [{r['ci95_pp'][0]:+.2f}, {r['ci95_pp'][1]:+.2f}]"
            f"  {r['top1_agreement']:.3f}  {r['kl_mean']:.4f}"
        )
    return "\n".join(rows)


if __name__ == "__main__":
    raise SystemExit(main())
