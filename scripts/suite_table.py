"""Run every shipped external suite on a model and write the README's results table.

    HF_HUB_OFFLINE=1 .venv/bin/python scripts/suite_table.py            # all suites, README
    HF_HUB_OFFLINE=1 .venv/bin/python scripts/suite_table.py --suites mmlu_astronomy --no-readme

Each ``examples/suites/*.yaml`` is evaluated with ``specialize eval`` (the same code path, in
this process), its report lands in ``runs/eval/<suite>/``, and the table between the
``<!-- suites:start -->`` and ``<!-- suites:end -->`` markers of README.md is replaced by one
built from those reports. Nothing in the table is typed by hand.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(ROOT))

START, END = "<!-- suites:start -->", "<!-- suites:end -->"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def row(name: str, cfg: dict, report: dict) -> str:
    m = report["metrics"]["base"]
    task = {"qa": "open answer", "mc": "multiple choice", "tf": "true/false", "math": "math"}
    from specialize.evaluate.suites import get_suite

    spec = get_suite(cfg["suite"])
    if spec.task == "qa":
        main = f"EM {_pct(m.get('exact_match'))} / F1 {_pct(m.get('f1'))}"
        if "bertscore_f1" in m:
            main += f" / BERTScore {_pct(m['bertscore_f1'])}"
    elif spec.task in ("mc", "tf"):
        main = f"acc {_pct(m.get('accuracy'))} (log-lik {_pct(m.get('loglik_accuracy'))})"
    else:
        main = f"acc {_pct(m.get('accuracy'))}"
    chance = ""
    if spec.task == "mc":
        chance = "25.0"
    elif spec.task == "tf":
        chance = "50.0"
    return (
        f"| {name} | {task.get(spec.task, spec.task)} | {m['n']} | {main} | {chance} | "
        f"{m.get('unparsed', 0)} | {m.get('perplexity', float('nan')):.2f} |"
    )


def main(argv: list[str] | None = None) -> int:
    import yaml

    from specialize.evaluate.runner import EvalRequest, run_eval

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--suites", help="comma-separated subset of examples/suites/*.yaml names")
    p.add_argument("--no-readme", action="store_true", help="print the table, leave README")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    configs = sorted((ROOT / "examples" / "suites").glob("*.yaml"))
    if args.suites:
        want = {s.strip() for s in args.suites.split(",")}
        configs = [c for c in configs if c.stem in want]
    rows = []
    model = None
    for path in configs:
        cfg = yaml.safe_load(path.read_text(encoding="utf-8"))
        model = cfg.get("model")
        out = run_eval(
            EvalRequest(
                target=path, out=ROOT / "runs" / "eval" / path.stem, progress=not args.no_progress
            )
        )
        report = json.loads((out / "report.json").read_text(encoding="utf-8"))
        rows.append(row(path.stem, cfg, report))
        print(rows[-1], flush=True)
    table = [
        f"Bundled model `{model}`, greedy decoding, float32 on this CPU "
        f"({time.strftime('%Y-%m-%d')}). Produced by `scripts/suite_table.py`; per-record "
        "answers in `runs/eval/<suite>/`. Percentages; log-lik = the option the model "
        "scores as most likely; perplexity of the reference answers.",
        "",
        "| suite | task | records | score | chance | unparsed | ref. perplexity |",
        "|---|---|---:|---|---:|---:|---:|",
        *rows,
    ]
    text = "\n".join(table)
    print(text)
    if not args.no_readme and not args.suites:
        readme = ROOT / "README.md"
        body = readme.read_text(encoding="utf-8")
        if START not in body or END not in body:
            raise SystemExit(f"README.md has no {START} ... {END} markers")
        head, rest = body.split(START, 1)
        _, tail = rest.split(END, 1)
        readme.write_text(f"{head}{START}\n{text}\n{END}{tail}", encoding="utf-8")
        print("updated README.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
