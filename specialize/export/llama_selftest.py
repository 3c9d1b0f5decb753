"""Does this llama.cpp build run quantized GGUF files on this CPU? Run after every install.

``python -m specialize.export.llama_selftest [--json]`` builds a tiny LLaMA whose rows are a
multiple of 256 (so the K-quant and Q8_0 kernels, the ones whose AMX variants crashed, are
really used), converts it to F16, quantizes it to Q8_0 and Q4_K_M, and decodes every file with
``logits_all`` in a child process; the bundled model's own Q4_1 file is decoded too when its
package is installed. A build whose kernels crash fails here with one line naming the file and
the signal, at install time, instead of fifteen minutes into a run. Each quantized file's
next-token agreement with the F16 file is reported: a kernel that runs but computes garbage is
caught too (random weights make low-bit agreement modest, so the bar is loose but not zero).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from specialize.errors import SpecializeError

MIN_TOP1 = {"q8_0": 0.8, "q4_k_m": 0.3, "bundled-q4_1": 0.0}


def _tiny_folder(root: Path) -> Path:
    from specialize.models.tiny import build_llama, build_tokenizer

    tok = build_tokenizer("chatml")
    model = build_llama(
        tok, seed=0, hidden_size=256, intermediate_size=512, num_attention_heads=4,
        num_key_value_heads=2, tie=False,
    )  # fmt: skip
    folder = root / "tiny"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def _bundled_q4_1() -> Path | None:
    try:
        from specialize.models.load import resolve

        source = resolve("bundled:smollm2-135m-instruct")
    except (SpecializeError, ImportError):
        return None
    path = Path(source.describe())
    return path if path.suffix == ".gguf" and path.is_file() else None


def run_selftest() -> dict[str, Any]:
    """Decode F16, Q8_0, Q4_K_M (and the bundled Q4_1) with logits_all; raise on failure."""
    from specialize.export.gguf import convert_to_gguf, quantize
    from specialize.infer.llama_process import LlamaProcess, system_info_in_child

    t0 = time.perf_counter()
    report: dict[str, Any] = {"system_info": system_info_in_child(), "files": {}}
    ids = [int(i) for i in np.random.default_rng(0).integers(3, 300, size=48)]
    with tempfile.TemporaryDirectory(prefix="specialize-selftest-") as tmp:
        root = Path(tmp)
        folder = _tiny_folder(root)
        files = {"f16": convert_to_gguf(folder, root / "tiny-f16.gguf", "f16")["path"]}
        for t in ("q8_0", "q4_k_m"):
            files[t] = quantize(files["f16"], root / f"tiny-{t}.gguf", t)["path"]
        bundled = _bundled_q4_1()
        logits: dict[str, np.ndarray] = {}
        for name, path in files.items():
            with LlamaProcess(path, n_ctx=128, logits_all=True, purpose="self-testing") as llm:
                logits[name] = llm.scores(ids)
        if bundled is not None:
            with LlamaProcess(bundled, n_ctx=128, logits_all=True, purpose="self-testing") as llm:
                text = "The orbital period of a geostationary satellite is 23 h 56 min.\n\n1. "
                got = llm.scores(llm.tokenize(text.encode(), add_bos=True))
            report["files"]["bundled-q4_1"] = {"finite": bool(np.isfinite(got).all())}
    ref = logits["f16"].argmax(-1)
    for name, arr in logits.items():
        row: dict[str, Any] = {"finite": bool(np.isfinite(arr).all())}
        if name != "f16":
            row["top1_vs_f16"] = float((arr.argmax(-1) == ref).mean())
        report["files"][name] = row
    bad = [
        f"{n}: " + ("non-finite logits" if not r["finite"] else f"top-1 {r['top1_vs_f16']:.2f}")
        for n, r in report["files"].items()
        if not r["finite"] or r.get("top1_vs_f16", 1.0) < MIN_TOP1.get(n, 0.0)
    ]
    if bad:
        raise SpecializeError(f"llama.cpp computes wrong logits: {'; '.join(bad)}")
    report["seconds"] = round(time.perf_counter() - t0, 1)
    report["summary"] = ", ".join(
        n + (f" top-1 {r['top1_vs_f16']:.2f}" if "top1_vs_f16" in r else " ok")
        for n, r in report["files"].items()
    )
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print the report as JSON")
    args = ap.parse_args(argv)
    try:
        report = run_selftest()
    except SpecializeError as e:
        print(f"llama.cpp self-test failed: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(report))
    else:
        print(f"llama.cpp self-test passed in {report['seconds']} s: {report['summary']}")
        print(report["system_info"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
