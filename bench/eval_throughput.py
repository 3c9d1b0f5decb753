"""Evaluation throughput: the generation engine vs one-at-a-time ``model.generate``.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/eval_throughput.py --json bench/eval_throughput.json
    HF_HUB_OFFLINE=1 .venv/bin/python bench/eval_throughput.py --records 20    # a quick check

The bundled model (float32) answers the same test questions of ``examples/space`` (its test
split, in file order, the first ``--records``) greedily, up to ``--max-new-tokens`` tokens,
stopping at end-of-turn:

- **baseline**: one ``model.generate(input_ids, do_sample=False, eos_token_id=...)`` call per
  record, how the seed projects evaluated;
- **engine**: :class:`specialize.infer.hf.HFBackend` (the continuous-batching engine) with
  ``--batch-size`` rows per batch, each record a ``Request`` of its rendered prompt ids.

Both are timed in this process, one after the other, after a short warm-up of each. The
answers must be identical, token for token; every difference is listed. Prints records/s of
each and the ratio; ``--json PATH`` writes ``{"baseline_records_per_s",
"engine_records_per_s", "ratio", "identical_outputs", ...}``.
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


def test_records(n: int) -> tuple[list[dict[str, Any]], Any, Any, str]:
    """The first ``n`` test records of the space example, its tokenizer, model and format."""
    from specialize.config import load_config
    from specialize.data.prepare import prepare_data
    from specialize.models.load import load_model, load_tokenizer, resolve

    cfg = load_config(ROOT / "examples" / "space" / "config.yaml")
    source = resolve(cfg.model.base, cfg._base_dir)
    tokenizer = load_tokenizer(source)
    records = prepare_data(cfg).splits["test"][:n]
    if len(records) < n:
        raise SystemExit(f"--records {n}: the test split has only {len(records)} records")
    return records, tokenizer, load_model(source, "float32"), cfg.chat.format


def baseline(model: Any, prompts: list[list[int]], stop_ids: list[int], max_new: int) -> list:
    """One ``model.generate`` per record; the new ids up to (not including) the stop id."""
    import torch
    from tqdm.auto import tqdm

    out = []
    for p in tqdm(prompts, desc="baseline", unit="rec", dynamic_ncols=True):
        ids = torch.tensor([p])
        with torch.inference_mode():
            gen = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=max_new,
                do_sample=False,
                eos_token_id=stop_ids,
                pad_token_id=stop_ids[0],
            )
        new = gen[0, len(p) :].tolist()
        cut = next((k for k, t in enumerate(new) if t in stop_ids), len(new))
        out.append(new[:cut])
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--records", type=int, default=200, help="test questions answered")
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--batch-size", type=int, default=128, help="engine rows per batch")
    p.add_argument("--json", type=Path, help="write the results to this file")
    args = p.parse_args(argv)

    import torch

    from specialize.infer.hf import HFBackend
    from specialize.infer.types import Request
    from specialize.models.chat import render_prompt, stop_token_ids

    records, tokenizer, model, fmt = test_records(args.records)
    model.eval()
    prompts = [render_prompt(r["messages"][:-1], tokenizer, fmt) for r in records]
    stop_ids = stop_token_ids(tokenizer, fmt)
    lengths = sorted(len(x) for x in prompts)
    print(
        f"{len(prompts)} test questions, prompt tokens {lengths[0]}-{lengths[-1]} "
        f"(median {lengths[len(lengths) // 2]}), greedy, max {args.max_new_tokens} new tokens, "
        f"{torch.get_num_threads()} torch threads",
        flush=True,
    )
    # Warm-up both paths (allocator, kernels) on a few records, outside the timings.
    baseline(model, prompts[:2], stop_ids, 8)
    engine = HFBackend(model, tokenizer, fmt, args.batch_size)
    warm = [Request(prompt_ids=p, max_new_tokens=8) for p in prompts[:4]]
    engine.generate(warm, progress=False)

    t0 = time.perf_counter()
    base_ids = baseline(model, prompts, stop_ids, args.max_new_tokens)
    base_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    requests = [Request(prompt_ids=p, max_new_tokens=args.max_new_tokens) for p in prompts]
    answers = engine.generate(requests, desc="engine")
    engine_s = time.perf_counter() - t0
    # The engine returns text; compare token ids by re-encoding nothing: decode both the same way.
    base_text = [tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in base_ids]
    engine_text = [a.text for a in answers]
    engine_ids = [a.new_tokens for a in answers]
    diffs = [
        {"id": r["id"], "baseline": b, "engine": e}
        for r, b, e, bi, n in zip(
            records, base_text, engine_text, base_ids, engine_ids, strict=True
        )
        if b != e or len(bi) != n
    ]
    result = {
        "records": len(prompts),
        "max_new_tokens": args.max_new_tokens,
        "batch_size": args.batch_size,
        "baseline_s": base_s,
        "engine_s": engine_s,
        "baseline_records_per_s": len(prompts) / base_s,
        "engine_records_per_s": len(prompts) / engine_s,
        "ratio": base_s / engine_s,
        "identical_outputs": not diffs,
        "differences": diffs,
        "new_tokens": sum(len(x) for x in base_ids),
        "torch_threads": torch.get_num_threads(),
        "device": "cpu",
    }
    print(
        f"baseline (one model.generate per record): {result['baseline_records_per_s']:.2f} "
        f"records/s ({base_s:.1f} s)\n"
        f"engine (batch {args.batch_size}):                  "
        f"{result['engine_records_per_s']:.2f} records/s ({engine_s:.1f} s)\n"
        f"ratio {result['ratio']:.2f}x; identical outputs: {result['identical_outputs']} "
        f"({len(diffs)} of {len(prompts)} differ)"
    )
    for d in diffs[:5]:
        print(f"  {d['id']}: baseline {d['baseline']!r} | engine {d['engine']!r}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.json}")
    return 0 if not diffs else 1


if __name__ == "__main__":
    sys.exit(main())
