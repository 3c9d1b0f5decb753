"""Edge cost and benefit: Q4_K_M in llama.cpp vs the float32 HF model, speed and quality.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/quantized_speed.py --json bench/quantized_speed.json
    HF_HUB_OFFLINE=1 .venv/bin/python bench/quantized_speed.py --run runs/space-qa --records 40

Needs a finished run with a merged model and its GGUFs: ``make run`` (or ``specialize run``)
writes ``runs/space-qa/`` with both; ``specialize export RUN`` adds the GGUFs to an older run.

In one process, one after the other, on the same CPU threads:

1. **speed**: greedy generation of ``--new-tokens`` tokens, one sequence, after each of the
   first ``--prompts`` test prompts; end-of-turn may not end a run early, so both engines do
   the same work. The merged model runs in PyTorch float32 (``model.generate``), the
   Q4_K_M file in llama.cpp (llama-cpp-python). Each engine is warmed up first; the figure
   is the median tokens/s over ``--repeats`` runs per prompt, prefill included
   (``specialize.export.speed``). Q8_0 and F16 are timed too when the run has them.
2. **quality**: both answer the run's test records (``--records``, default all) greedily
   with the run's ``eval.max_new_tokens``: the HF model through specialize's batched engine,
   the GGUF through llama.cpp with its own chat template. Token F1 (SQuAD v1.1
   normalisation) of each and the paired-bootstrap 95% CI of the difference.

Prints both and ``--json PATH`` writes ``{"hf_fp32_tokens_per_s", "q4_k_m_tokens_per_s",
"ratio", "metric_delta_pp", ...}`` where ``metric_delta_pp`` is (F1 of Q4_K_M - F1 of HF
float32) x 100, in percentage points; negative means quantization cost quality.
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", type=Path, default=ROOT / "runs" / "space-qa")
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--prompts", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--records", type=int, default=0, help="test records scored (0 = all)")
    ap.add_argument("--bootstrap", type=int, default=2000)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)

    import torch
    import yaml
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from specialize.evaluate.compare import compare_variants
    from specialize.evaluate.stage import EvalSettings, Variant, evaluate
    from specialize.export.speed import gguf_tokens_per_s, hf_tokens_per_s
    from specialize.infer.llama_process import cpu_threads
    from specialize.infer.llamacpp import LlamaCppBackend
    from specialize.io import read_jsonl
    from specialize.models.chat import render_prompt
    from specialize.runinfo import hardware, installed_stack

    run = args.run.resolve()
    cfg = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))
    name, fmt = cfg["name"], cfg["chat"]["format"]
    ggufs = {t: run / "gguf" / f"{name}-{t}.gguf" for t in ("f16", "q8_0", "q4_k_m")}
    if not (run / "merged" / "config.json").is_file() or not ggufs["q4_k_m"].is_file():
        raise SystemExit(
            f"{run}: needs merged/ and gguf/{name}-q4_k_m.gguf; run `make run` or "
            f"`specialize export {run}` first"
        )
    records = read_jsonl(run / "data" / "test.jsonl")
    records = records[: args.records] if args.records else records

    torch.set_num_threads(cpu_threads())
    tok = AutoTokenizer.from_pretrained(run / "merged")
    model = AutoModelForCausalLM.from_pretrained(run / "merged", dtype=torch.float32).eval()
    prompts = [render_prompt(r["messages"][:-1], tok, fmt) for r in records[: args.prompts]]

    print(f"speed: {args.new_tokens} new tokens x {len(prompts)} prompts x {args.repeats} runs")
    speed: dict[str, Any] = {}
    speed["hf_fp32"] = hf_tokens_per_s(model, prompts, args.new_tokens, args.repeats)
    print(f"  HF float32 (PyTorch): {speed['hf_fp32']['tokens_per_s']:.1f} tokens/s")
    for t, path in ggufs.items():
        if not path.is_file():
            continue
        speed[t] = gguf_tokens_per_s(path, prompts, args.new_tokens, args.repeats)
        print(f"  GGUF {t.upper()} (llama.cpp): {speed[t]['tokens_per_s']:.1f} tokens/s")

    print(f"quality: {len(records)} test records, token F1")
    t0 = time.perf_counter()
    max_new = int(cfg["eval"]["max_new_tokens"])
    settings = EvalSettings(
        fmt=fmt, max_new_tokens=max_new, batch_size=int(cfg["eval"]["batch_size"]), loglik=False
    )
    q4 = ggufs["q4_k_m"]
    results = evaluate(
        [
            Variant("hf_fp32", model=model, tokenizer=tok),
            Variant("q4_k_m", open_backend=lambda: LlamaCppBackend(q4, n_threads=cpu_threads())),
        ],
        records,
        settings,
    )
    preds, metrics = results.predictions(), results.metrics()
    comp = compare_variants(preds, [], args.bootstrap, 17)
    d = comp["vs_reference"]["q4_k_m"]["f1"]
    hf_tps, q4_tps = speed["hf_fp32"]["tokens_per_s"], speed["q4_k_m"]["tokens_per_s"]
    result = {
        "hf_fp32_tokens_per_s": hf_tps,
        "q4_k_m_tokens_per_s": q4_tps,
        "ratio": q4_tps / hf_tps,
        "metric": "token F1 (SQuAD v1.1 normalisation), test split",
        "hf_fp32_f1": metrics["hf_fp32"]["f1"],
        "q4_k_m_f1": metrics["q4_k_m"]["f1"],
        "metric_delta_pp": 100 * d["delta"],
        "metric_delta_ci95_pp": [100 * d["ci_low"], 100 * d["ci_high"]],
        "records": len(records),
        "speed": speed,
        "sizes_bytes": {
            "merged_safetensors": sum(
                p.stat().st_size for p in (run / "merged").glob("*.safetensors")
            ),
            **{f"gguf_{t}": p.stat().st_size for t, p in ggufs.items() if p.is_file()},
        },
        "run": str(run),
        "quality_wall_s": time.perf_counter() - t0,
        "threads": cpu_threads(),
        # Which llama.cpp build was measured: the flags decide which kernels run.
        "llama_cpp_build": installed_stack().get("llama_cpp_build"),
        "cpu": hardware()["cpu"],
    }
    print(
        f"\nQ4_K_M {q4_tps:.1f} vs HF float32 {hf_tps:.1f} tokens/s: {result['ratio']:.2f}x; "
        f"F1 {result['q4_k_m_f1']:.4f} vs {result['hf_fp32_f1']:.4f}: "
        f"{result['metric_delta_pp']:+.2f} pp (95% CI [{result['metric_delta_ci95_pp'][0]:+.2f}, "
        f"{result['metric_delta_ci95_pp'][1]:+.2f}])"
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
