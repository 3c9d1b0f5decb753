"""Constrained decoding: how often answers validate with and without it, and what it costs.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/constrained.py --json bench/constrained.json
    HF_HUB_OFFLINE=1 .venv/bin/python bench/constrained.py --records 20     # a quick check

The bundled model (SmolLM2-135M-Instruct) is asked, for each of ``--records`` questions of the
space example (``examples/space/qa``, in file order), to describe the question as a JSON array
of 1-3 objects, each with an enum field ``kind`` and a bounded list of 1-3 short strings
``keywords`` (:class:`Fact`). The same prompts run twice on each backend, greedy:

- **unconstrained**: the prompt alone (it spells out the format); the answer must still
  validate into ``list[Fact]`` to count as valid;
- **constrained**: the same prompt with ``Constraint.of(list[Fact])``, decoded under the schema,
  through :func:`specialize.infer.structured.generate_checked` as every caller does: an answer
  that does not validate (cut by the token budget: digits are a token each, and a keyword may
  hold 24 of them) is asked again with sampling, up to ``--retries`` times. ``valid_first_try``
  is the share valid before any retry; ``valid_constrained`` the share in the end.

Backends: the HF engine (float32, ``--batch-size`` rows; the constraint is a per-row token
mask from llguidance) and llama.cpp on the bundled GGUF (Q4_1; the constraint is llama.cpp's
JSON-schema grammar). Each pair runs in this process one after the other, after a warm-up.
``time_ratio`` is constrained/unconstrained wall time; ``per_token_ratio`` compares seconds per
generated token (answers differ in length: an unconstrained answer may ramble to the budget).
``--json PATH`` writes ``{"hf": {...}, "llamacpp": {...}, "records": N}``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(ROOT))


class Fact(BaseModel):
    kind: Literal["orbit", "vehicle", "instrument", "other"]
    keywords: list[Annotated[str, Field(min_length=1, max_length=24)]] = Field(
        min_length=1, max_length=3
    )


Facts = Annotated[list[Fact], Field(min_length=1, max_length=3)]

SYSTEM = "You turn questions into JSON. Reply with JSON only."
INSTRUCTION = (
    "Question: {q}\n\nDescribe this question as a JSON array of 1 to 3 objects. Each object "
    'has "kind" (one of "orbit", "vehicle", "instrument", "other") and "keywords" (a list of '
    "1 to 3 short strings from the question)."
)


def questions(n: int) -> list[str]:
    from specialize.data.read import read_records

    records, _ = read_records(ROOT / "examples" / "space" / "qa")
    qs = [next(m["content"] for m in r["messages"] if m["role"] == "user") for r in records]
    if len(qs) < n:
        raise SystemExit(f"--records {n}: the example has only {len(qs)} questions")
    return qs[:n]


def requests(qs: list[str], constrained: bool, max_new: int) -> list[Any]:
    from specialize.infer.types import Constraint, Request

    c = Constraint.of(Facts, name="facts") if constrained else None
    return [
        Request(
            messages=[
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": INSTRUCTION.format(q=q)},
            ],
            max_new_tokens=max_new,
            constraint=c,
        )
        for q in qs
    ]


def valid_rate(results: list[Any]) -> float:
    from specialize.infer.types import Constraint, InvalidOutput

    check = Constraint.of(Facts)
    ok = 0
    for r in results:
        try:
            check.validate(r.text)
            ok += r.error is None
        except InvalidOutput:
            pass
    return ok / len(results)


def measure(backend: Any, qs: list[str], max_new: int, label: str, retries: int) -> dict[str, Any]:
    """Warm up, then unconstrained and constrained passes over the same prompts."""
    from specialize.infer.structured import generate_checked
    from specialize.infer.types import Counts

    backend.generate(requests(qs[:2], False, 8), progress=False)
    backend.generate(requests(qs[:2], True, 8), progress=False)
    out: dict[str, Any] = {}
    for kind in ("unconstrained", "constrained"):
        reqs = requests(qs, kind == "constrained", max_new)
        counts = Counts()
        t0 = time.perf_counter()
        if kind == "constrained":
            res = generate_checked(
                backend, reqs, retries=retries, counts=counts, desc=f"{label} {kind}"
            )
        else:
            res = backend.generate(reqs, desc=f"{label} {kind}")
        secs = time.perf_counter() - t0
        tokens = sum(r.new_tokens for r in res)
        out[kind] = {
            "seconds": secs,
            "new_tokens": tokens,
            "valid": valid_rate(res),
            "errors": sum(r.error is not None for r in res),
            "cut_by_budget": sum(r.finish_reason == "length" for r in res),
            "example": res[0].text,
        }
        if kind == "constrained":
            out[kind].update(
                valid_first_try=sum(r.ok and r.attempts == 1 for r in res) / len(res),
                retries=counts.retries,
                invalid_reasons=counts.invalid_reasons,
            )
    u, c = out["unconstrained"], out["constrained"]
    return {
        "valid_constrained": c["valid"],
        "valid_first_try": c["valid_first_try"],
        "valid_unconstrained": u["valid"],
        "time_ratio": c["seconds"] / u["seconds"],
        "per_token_ratio": (c["seconds"] / max(c["new_tokens"], 1))
        / (u["seconds"] / max(u["new_tokens"], 1)),
        **{f"{k}_detail": v for k, v in out.items()},
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--records", type=int, default=200)
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--retries", type=int, default=2, help="re-asks of an invalid answer")
    p.add_argument("--batch-size", type=int, default=16, help="HF engine rows per batch")
    p.add_argument("--skip-llamacpp", action="store_true")
    p.add_argument("--json", type=Path, help="write the results to this file")
    args = p.parse_args(argv)

    import torch

    from specialize.infer.hf import HFBackend
    from specialize.models.load import load_model, load_tokenizer, resolve

    qs = questions(args.records)
    source = resolve("bundled:smollm2-135m-instruct")
    tokenizer = load_tokenizer(source)
    result: dict[str, Any] = {
        "records": len(qs),
        "max_new_tokens": args.max_new_tokens,
        "batch_size": args.batch_size,
        "retries": args.retries,
        "schema": json.loads(json.dumps(Fact.model_json_schema())),
        "torch_threads": torch.get_num_threads(),
    }
    with HFBackend(load_model(source, "float32"), tokenizer, "chatml", args.batch_size) as hf:
        result["hf"] = measure(hf, qs, args.max_new_tokens, "hf", args.retries)
    if not args.skip_llamacpp:
        from specialize.infer.llamacpp import LlamaCppBackend

        with LlamaCppBackend(source.describe(), n_ctx=1024) as ll:
            result["llamacpp"] = measure(ll, qs, args.max_new_tokens, "llama.cpp", args.retries)
    for name in ("hf", "llamacpp"):
        if name in result:
            r = result[name]
            print(
                f"{name:9s} valid: constrained {r['valid_constrained']:.1%} (first try "
                f"{r['valid_first_try']:.1%}), unconstrained "
                f"{r['valid_unconstrained']:.1%}; time constrained/unconstrained "
                f"{r['time_ratio']:.2f}x (per token {r['per_token_ratio']:.2f}x)"
            )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
