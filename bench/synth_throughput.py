"""Synthetic-data throughput: the engine-backed generator vs one request at a time.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/synth_throughput.py --json bench/synth_throughput.json
    HF_HUB_OFFLINE=1 .venv/bin/python bench/synth_throughput.py --docs 2 --probability 0.5  # quick

The bundled model (SmolLM2-135M-Instruct, float32) is the teacher of
:func:`specialize.data.synth.generate_dataset` on the first ``--docs`` documents of
``examples/space/docs``, chunked into ``--chunk-size`` / ``--chunk-overlap`` words, every
built-in task (or ``--tasks``) at ``--probability``, greedy (``temperature: 0``), at most
``--max-new-tokens`` per answer, ``--retries`` sampled re-asks of an invalid answer. The same
configuration runs twice, each time into its own fresh temporary folder (no teacher cache is
shared), with a different teacher:

- **engine**: :class:`specialize.infer.hf.HFBackend`, the continuous-batching engine with a
  per-row llguidance token mask, ``--batch-size`` rows;
- **baseline**: ``bench/naive_teacher.py``'s :class:`NaiveHFTeacher`, how a seed-style tool
  generates locally: one ``model.generate`` per request with a grammar logits processor
  (outlines / transformers style; the same llguidance masks), stopping at end of turn, at a
  stop string or when the grammar is complete.

Both see the same prompts (the run's chat format) and follow the same stop rules, so in greedy
mode the two datasets must be identical: every record (messages and metadata) and every
task's counts in ``synth_stats.json``; every difference is listed and the script exits 1.
``records/s`` = kept records / wall time of ``generate_dataset`` (reading and chunking the
documents, every teacher call and retry, filtering and writing included; loading the model
and a short warm-up of each teacher excluded). ``valid_rate`` = valid answers / teacher calls
of the structured tasks (retries counted as calls), engine run. ``--json PATH`` writes
``{"engine_records_per_s", "baseline_records_per_s", "ratio", "identical", "valid_rate", ...}``.

``prefill_s`` is every baseline call's prompt run through the model once, one at a time: a
prompt's forward pass is compute-bound already at one row, so batching gains only on decoding,
and ``baseline_s / prefill_s`` bounds the ratio of any engine that does not reuse one
request's prompt cache for another (Amdahl). Measured at the quick size it is 9% of the
baseline (a bound of 11x), so prefill is not what holds the engine under 5x there: with 18
first requests the batch is never full, and it empties while the longest answers finish.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

TASKS = ("bullets", "qa_pairs", "rephrase", "continuation", "triplets", "retrieval", "comparison")
TEACHER = "bundled:smollm2-135m-instruct"
# Per-task counts that must agree between the two runs (synth_stats.json "tasks" rows).
COUNTS = ("planned", "teacher_calls", "retries", "valid", "invalid", "invalid_reasons")
COUNTS += ("removed", "kept", "splits")


def synth_config(args: argparse.Namespace) -> Any:
    from specialize.config import RunConfig

    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    cfg = RunConfig.model_validate(
        {
            "name": "synth-bench",
            "model": {"base": TEACHER},
            "synth": {
                "documents": str(args.documents.resolve()),
                "max_documents": args.docs,
                "chunk": {"unit": "words", "size": args.chunk_size, "overlap": args.chunk_overlap},
                "tasks": [{"name": t, "probability": args.probability} for t in tasks],
                "teacher": TEACHER,
                "max_new_tokens": args.max_new_tokens,
                "temperature": 0.0,
                "batch_size": args.batch_size,
                "retries": args.retries,
                "seed": args.seed,
            },
        }
    )
    return cfg.synth


class Timed:
    """A teacher that notes the wall time and request count of each ``generate`` call (the
    generator's phases: on the engine one call whose retries and retrieval answers join the
    running batch; on the baseline, rounds: first answers, then each round of retries and
    retrieval answers) and passes everything else through."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.name = inner, inner.name
        self.phases: list[dict[str, Any]] = []
        self.requests: list[Any] = []  # every request sent (rounds only)
        if hasattr(inner, "generate_chains"):  # keep the engine's chaining visible
            self.generate_chains = self._chains

    def _chains(self, requests: Any, step: Any, **kw: Any) -> None:
        t0 = time.perf_counter()
        calls = [0]

        def counted(i: int, res: Any) -> Any:
            calls[0] += 1
            return step(i, res)

        self.inner.generate_chains(requests, counted, **kw)
        desc = kw.get("desc", "generate") + " (chained)"
        self.phases.append({"phase": desc, "requests": calls[0]})
        self.phases[-1]["s"] = round(time.perf_counter() - t0, 2)

    def generate(self, requests: Any, **kw: Any) -> Any:
        self.requests.extend(requests)
        t0 = time.perf_counter()
        out = self.inner.generate(requests, **kw)
        desc = kw.get("desc", "generate")
        self.phases.append({"phase": desc, "requests": len(requests)})
        self.phases[-1]["s"] = round(time.perf_counter() - t0, 2)
        return out

    def close(self) -> None:
        self.inner.close()


def prefill_floor(model: Any, tokenizer: Any, requests: list[Any]) -> float:
    """Seconds to run every request's prompt through the model once, one at a time: the
    work neither teacher can batch away (a prompt's forward pass is already compute-bound at
    one row; only decoding gains from rows sharing a step), so ``baseline_s / this`` bounds
    the ratio any batching engine can reach without reusing a prompt's cache across requests."""
    import torch

    from specialize.models.chat import render_prompt

    total = 0.0
    with torch.inference_mode():
        for req in requests:
            ids = torch.tensor([render_prompt(req.messages, tokenizer, "chatml")])
            t0 = time.perf_counter()
            model(input_ids=ids, logits_to_keep=1)
            total += time.perf_counter() - t0
    return total


def run(synth: Any, teacher: Any, tokenizer: Any, label: str) -> tuple[Any, float, Timed]:
    """One generation into a fresh temporary folder: the output, its wall time, its calls."""
    from specialize.data.synth import generate_dataset

    timed = Timed(teacher)
    with tempfile.TemporaryDirectory(prefix=f"synth-bench-{label}-") as tmp:
        print(f"\n== {label}: {teacher.name}", flush=True)
        t0 = time.perf_counter()
        out = generate_dataset(
            synth, ROOT, timed, Path(tmp), teacher_name=TEACHER, tokenizer=tokenizer
        )
        return out, time.perf_counter() - t0, timed


def differences(engine: Any, base: Any) -> list[str]:
    """Every way the two datasets differ: records (by id, field by field) and task counts."""
    diffs: list[str] = []
    a = {r["id"]: r for r in engine.records}
    b = {r["id"]: r for r in base.records}
    if [r["id"] for r in engine.records] != [r["id"] for r in base.records]:
        diffs += [f"record {i}: only in the engine run" for i in a if i not in b]
        diffs += [f"record {i}: only in the baseline run" for i in b if i not in a]
    for rid in [i for i in a if i in b]:
        ra, rb = a[rid], b[rid]
        for key in sorted(ra.keys() | rb.keys()):
            if ra.get(key) != rb.get(key):
                diffs.append(
                    f"record {rid}: {key}: engine {ra.get(key)!r} | baseline {rb.get(key)!r}"
                )
    ta, tb = engine.stats["tasks"], base.stats["tasks"]
    for name in sorted(ta.keys() | tb.keys()):
        for key in COUNTS:
            va, vb = ta.get(name, {}).get(key), tb.get(name, {}).get(key)
            if va != vb:
                diffs.append(f"stats {name}.{key}: engine {va!r} | baseline {vb!r}")
    return diffs


def valid_rate(out: Any) -> tuple[int, int]:
    """(valid answers, teacher calls) over the structured tasks that ask the teacher."""
    structured = {t.name for t in out.catalog if t.structured and t.needs_teacher}
    rows = [row for name, row in out.stats["tasks"].items() if name in structured]
    return sum(r["valid"] for r in rows), sum(r["teacher_calls"] for r in rows)


def warm_up(teachers: list[Any]) -> None:
    """A constrained and a free request through each teacher (kernels, masker, grammar)."""
    from specialize.data.tasks import BUILTIN
    from specialize.infer.types import Request

    c = BUILTIN["bullets"].constraint()
    msgs = [{"role": "user", "content": "List two facts about Mars as JSON."}]
    reqs = [Request(messages=msgs, max_new_tokens=8, constraint=c)]
    reqs.append(Request(messages=msgs, max_new_tokens=8))
    for t in teachers:
        t.generate(reqs, progress=False)


def table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--documents", type=Path, default=ROOT / "examples" / "space" / "docs")
    p.add_argument("--docs", type=int, default=6, help="first N documents")
    p.add_argument("--chunk-size", type=int, default=150, help="words per chunk")
    p.add_argument("--chunk-overlap", type=int, default=30, help="words shared by neighbours")
    p.add_argument("--tasks", default=",".join(TASKS), help="comma-separated task names")
    p.add_argument("--probability", type=float, default=0.25, help="of each (chunk, task)")
    p.add_argument("--max-new-tokens", type=int, default=160)
    p.add_argument("--retries", type=int, default=2)
    p.add_argument("--seed", type=int, default=17)
    p.add_argument("--batch-size", type=int, default=32, help="engine rows (synth default)")
    p.add_argument("--json", type=Path, help="write the results to this file")
    args = p.parse_args(argv)
    load_before = [round(x, 2) for x in os.getloadavg()]  # before this process adds its own

    import torch
    from naive_teacher import NaiveHFTeacher

    from specialize.infer.hf import HFBackend
    from specialize.models.load import load_model, load_tokenizer, resolve

    synth = synth_config(args)
    source = resolve(TEACHER, ROOT)
    tokenizer = load_tokenizer(source)
    model = load_model(source, "float32").eval()
    engine = HFBackend(model, tokenizer, "chatml", args.batch_size)
    naive = NaiveHFTeacher(model, tokenizer, "chatml")
    print(
        f"teacher {TEACHER} (float32), {args.docs} documents, chunks of {args.chunk_size}/"
        f"{args.chunk_overlap} words, tasks {args.tasks} at p={args.probability}, greedy, max "
        f"{args.max_new_tokens} new tokens, {args.retries} retries, engine batch "
        f"{args.batch_size}, {torch.get_num_threads()} torch threads",
        flush=True,
    )
    if load_before[0] > 0.7:
        print(
            f"note: load average {load_before[0]} at the start: other jobs on these "
            f"{os.cpu_count()} cores slow both teachers, unevenly; measure on a quiet CPU",
            flush=True,
        )
    warm_up([engine, naive])
    eng_out, eng_s, eng_timed = run(synth, engine, tokenizer, "engine")
    base_out, base_s, base_timed = run(synth, naive, tokenizer, "baseline")
    engine.close()
    eng_phases, base_phases = eng_timed.phases, base_timed.phases
    prefill_s = prefill_floor(model, tokenizer, base_timed.requests)

    diffs = differences(eng_out, base_out)
    valid, calls = valid_rate(eng_out)
    kept_e, kept_b = len(eng_out.records), len(base_out.records)
    totals = eng_out.stats["totals"]
    result: dict[str, Any] = {
        "engine_records_per_s": kept_e / eng_s,
        "baseline_records_per_s": kept_b / base_s,
        "ratio": (kept_e / eng_s) / (kept_b / base_s) if kept_b and base_s else None,
        "identical": not diffs,
        "valid_rate": valid / calls if calls else None,
        "engine_s": eng_s,
        "baseline_s": base_s,
        "records": {"engine": kept_e, "baseline": kept_b},
        "structured_valid": valid,
        "structured_teacher_calls": calls,
        "totals": {"engine": totals, "baseline": base_out.stats["totals"]},
        "chunks": eng_out.stats["documents"]["chunks"],
        "tasks": {
            name: {k: row.get(k) for k in COUNTS} for name, row in eng_out.stats["tasks"].items()
        },
        "phases": {"engine": eng_phases, "baseline": base_phases},
        # the prompts' forward passes, one at a time: batching cannot remove this work
        "prefill_s": prefill_s,
        "prefill_share_of_baseline": prefill_s / base_s if base_s else None,
        "max_ratio_without_prompt_cache_reuse": base_s / prefill_s if prefill_s else None,
        "differences": diffs,
        "settings": {
            "teacher": TEACHER,
            "dtype": "float32",
            "documents": str(args.documents.relative_to(ROOT))
            if args.documents.resolve().is_relative_to(ROOT)
            else str(args.documents),
            "docs": args.docs,
            "chunk_size": args.chunk_size,
            "chunk_overlap": args.chunk_overlap,
            "tasks": args.tasks.split(","),
            "probability": args.probability,
            "max_new_tokens": args.max_new_tokens,
            "temperature": 0.0,
            "retries": args.retries,
            "seed": args.seed,
            "engine_batch_size": args.batch_size,
            "torch_threads": torch.get_num_threads(),
            "device": "cpu",
            "cpu_count": os.cpu_count(),
            "load_average_before": load_before,
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
        },
    }
    rows = [("teacher", "records", "teacher calls", "wall s", "records/s")]
    for label, out, secs in (("engine", eng_out, eng_s), ("baseline", base_out, base_s)):
        rows.append(
            (
                label,
                str(len(out.records)),
                str(out.stats["totals"]["teacher_calls"]),
                f"{secs:.1f}",
                f"{len(out.records) / secs:.3f}",
            )
        )
    print("\n" + table(rows))
    if len(eng_phases) == len(base_phases):
        rows = [("teacher call", "requests", "engine s", "baseline s", "ratio")]
        for e, b in zip(eng_phases, base_phases, strict=True):
            r = f"{b['s'] / e['s']:.2f}x" if e["s"] else "-"
            rows.append((e["phase"], str(e["requests"]), f"{e['s']:.1f}", f"{b['s']:.1f}", r))
        print("\n" + table(rows))
    print(
        f"\nprompt prefill alone (one at a time, every baseline call): {prefill_s:.1f} s = "
        f"{prefill_s / base_s:.0%} of the baseline; batching decode cannot beat "
        f"{base_s / prefill_s:.2f}x without reusing prompt caches across requests"
    )
    ratio = result["ratio"]
    rate = result["valid_rate"]
    print(
        f"ratio {ratio:.2f}x" if ratio is not None else "ratio: no baseline records",
        f"| identical: {result['identical']} ({len(diffs)} differences)",
        f"| valid {valid}/{calls}" + (f" ({rate:.1%})" if rate is not None else ""),
    )
    for d in diffs[:10]:
        print("  " + (d if len(d) <= 300 else d[:297] + "..."))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.json}")
    return 0 if not diffs else 1


if __name__ == "__main__":
    sys.exit(main())
