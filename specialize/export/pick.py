"""Which GGUF file to ship: the smallest whose quality loss stays within the run's budget.

Every quantized file answered the evaluation records through llama.cpp and was compared with
the tuned model it came from (``eval/compare_gguf.json``: paired deltas with bootstrap CIs).
:func:`pick_file` ranks the files by size and takes the first whose loss on the budget's
metric is at most ``export.quality_budget_pp`` percentage points, and writes the decision
with every candidate's figures to ``export/pick.json`` for the card and for people.

Why the point estimate decides and the CI is only reported: on a few hundred records a 95%
interval of a token-F1 delta is several points wide, so "the whole CI within 2 pp" would
reject every quantized file, Q8_0 included, and the rule would say nothing. The record says
whether the CI spans the budget (``ci_within``) so nobody reads the pick as a proof. A file
that lost more than the budget is never picked; when none is within it, the F16 file is
(it is the tuned model to within the round-trip check's top-1 agreement).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, get_args

from specialize.config import ShareMetric
from specialize.errors import SpecializeError
from specialize.io import read_json, write_json

log = logging.getLogger("specialize")

SHARE_METRICS: tuple[str, ...] = get_args(ShareMetric)  # the budget's metrics, preferred first
EDGE = 1e-9  # a loss of exactly the budget is within it (100 x 0.041 is 4.1000000000000005)


@dataclass(frozen=True)
class Candidate:
    """One quantized file against the tuned model: its size and its paired delta, in pp."""

    type: str
    file: str
    bytes: int
    bits_per_weight: float | None
    delta_pp: float
    ci_pp: tuple[float, float]
    within: bool  # the point estimate loses at most the budget
    ci_within: bool  # ... and so does the CI's lower end


@dataclass(frozen=True)
class Pick:
    """The chosen file and why: ``type`` is a quantized type, or ``f16`` when none was within
    the budget; ``candidates`` are all evaluated files, smallest first."""

    type: str
    file: str
    bytes: int
    metric: str
    budget_pp: float
    n: int
    candidates: list[Candidate] = field(default_factory=list)

    @property
    def chosen(self) -> Candidate | None:
        return next((c for c in self.candidates if c.type == self.type), None)


def budget_metric(compare_gguf: dict[str, Any], requested: str | None) -> str:
    """The metric the budget is on: the configured one, else token F1, else the first share
    metric the comparison has."""
    deltas = next(iter(compare_gguf.get("vs_reference", {}).values()), {})
    if requested:
        if requested not in deltas:
            raise SpecializeError(
                f"export.quality_metric '{requested}' was not evaluated on the GGUF files "
                f"(evaluated: {', '.join(k for k in deltas if k in SHARE_METRICS) or 'none'})",
                field="export.quality_metric",
            )
        return requested
    found = next((m for m in SHARE_METRICS if m in deltas), None)
    if found is None:
        raise SpecializeError(
            "no share metric (F1, accuracy, schema_valid ...) was compared between the GGUF "
            "files and the tuned model, so export.quality_budget_pp has nothing to judge",
            field="export.quality_budget_pp",
        )
    return found


def pick_file(
    compare_gguf: dict[str, Any],
    files: dict[str, dict[str, Any]],
    budget_pp: float,
    metric: str | None = None,
) -> Pick:
    """The smallest file of ``files`` (``export/gguf_files.json``: type -> {path, bytes,
    bits_per_weight}) whose ``metric`` lost at most ``budget_pp`` points against the tuned
    model in ``compare_gguf``; F16 when none did."""
    metric = budget_metric(compare_gguf, metric)
    candidates = []
    for name, deltas in compare_gguf["vs_reference"].items():
        t = name.removeprefix("gguf-")
        if t not in files or metric not in deltas:
            continue
        d = deltas[metric]
        delta, lo, hi = (100 * d[k] for k in ("delta", "ci_low", "ci_high"))
        candidates.append(
            Candidate(
                type=t,
                file=Path(files[t]["path"]).name,
                bytes=int(files[t]["bytes"]),
                bits_per_weight=files[t].get("bits_per_weight"),
                delta_pp=delta,
                ci_pp=(lo, hi),
                within=delta >= -budget_pp - EDGE,
                ci_within=lo >= -budget_pp - EDGE,
            )
        )
    candidates.sort(key=lambda c: c.bytes)
    best = next((c for c in candidates if c.within), None)
    if best is not None:
        chosen = (best.type, best.file, best.bytes)
    elif "f16" in files:
        chosen = ("f16", Path(files["f16"]["path"]).name, int(files["f16"]["bytes"]))
    else:
        raise SpecializeError("no F16 GGUF to fall back on", field="export.quality_budget_pp")
    return Pick(*chosen, metric, budget_pp, int(compare_gguf["n"]), candidates)


def write_pick(run: Path, budget_pp: float, metric: str | None) -> Pick | None:
    """Decide from the run's files and write ``export/pick.json``; None when the run
    evaluated no quantized file (nothing to decide from)."""
    comp_path, files_path = run / "eval" / "compare_gguf.json", run / "export" / "gguf_files.json"
    if not (comp_path.is_file() and files_path.is_file()):
        return None
    pick = pick_file(read_json(comp_path), read_json(files_path), budget_pp, metric)
    write_json(run / "export" / "pick.json", asdict(pick))
    c = pick.chosen
    if c is None:
        log.warning(
            "GGUF pick: no quantized file within %.1f pp %s of the tuned model; F16 (%s) is "
            "the file to ship",
            budget_pp,
            pick.metric,
            pick.file,
        )
    else:
        log.info(
            "GGUF pick: %s (%s, %.1f MB), %s %+.2f pp (95%% CI [%+.2f, %+.2f]) within the "
            "%.1f pp budget%s",
            c.type.upper(),
            c.file,
            c.bytes / 1e6,
            pick.metric,
            c.delta_pp,
            *c.ci_pp,
            budget_pp,
            "" if c.ci_within else "; the CI spans the budget",
        )
    return pick
