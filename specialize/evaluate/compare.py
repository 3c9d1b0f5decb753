"""Base-vs-tuned comparison with paired bootstrap confidence intervals.

Both variants answer the *same* records, so the honest uncertainty of a difference comes from
resampling records and recomputing both means on each resample (paired bootstrap), not from
two independent intervals.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np


def paired_bootstrap(
    a: Sequence[float],
    b: Sequence[float],
    weights: Sequence[float] | None = None,
    samples: int = 2000,
    seed: int = 0,
    transform: Callable[[np.ndarray], np.ndarray] | None = None,
) -> dict[str, float]:
    """``f(mean b) - f(mean a)`` with a 95% percentile interval from paired resamples.

    Means are weighted when ``weights`` are given (e.g. token counts for a token-weighted
    loss); ``transform`` is ``f`` (identity by default; ``np.exp`` turns a loss delta into a
    perplexity delta). Records are resampled once per bootstrap sample for both variants.
    """
    a_arr, b_arr = np.asarray(a, float), np.asarray(b, float)
    if a_arr.shape != b_arr.shape:
        raise ValueError(f"paired samples differ in length: {len(a_arr)} vs {len(b_arr)}")
    n = len(a_arr)
    if n == 0:
        return {"delta": float("nan"), "ci_low": float("nan"), "ci_high": float("nan"), "n": 0}
    f = transform or (lambda x: x)
    w = np.ones(n) if weights is None else np.asarray(weights, float)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(samples, n))
    ws = w[idx]
    mean_a = (a_arr[idx] * ws).sum(1) / ws.sum(1)
    mean_b = (b_arr[idx] * ws).sum(1) / ws.sum(1)
    deltas = f(mean_b) - f(mean_a)
    point = float(
        f(np.array((b_arr * w).sum() / w.sum())) - f(np.array((a_arr * w).sum() / w.sum()))
    )
    lo, hi = np.percentile(deltas, [2.5, 97.5])
    return {"delta": point, "ci_low": float(lo), "ci_high": float(hi), "n": int(n)}


def breakdown(
    records: Sequence[dict[str, Any]], values: dict[str, Sequence[float]], field: str
) -> dict[str, dict[str, Any]]:
    """Mean of each metric per value of a metadata field (records without it: '(none)')."""
    groups: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(records):
        groups[str(r.get(field, "(none)"))].append(i)
    out: dict[str, dict[str, Any]] = {}
    for key in sorted(groups):
        idx = groups[key]
        out[key] = {"n": len(idx)} | {
            name: float(np.mean([vals[i] for i in idx])) for name, vals in values.items()
        }
    return out
