"""PNG plots a person would rather look at than read: loss curves and metric comparisons."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from specialize.io import atomic_path


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def loss_curve(history: dict[str, Any], out: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    tr = history.get("train", [])
    va = [v for v in history.get("validation", []) if v["loss"] == v["loss"]]
    if tr:
        ax.plot([r["step"] for r in tr], [r["loss"] for r in tr], label="train", lw=1.2)
    if va:
        ax.plot([r["step"] for r in va], [r["loss"] for r in va], "o-", label="validation")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (assistant tokens)")
    ax.set_title("Training and validation loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def metric_bars(metrics: dict[str, dict[str, float]], compare: dict[str, Any], out: Path) -> None:
    """Base vs tuned on EM and F1 (with the delta's CI in the title) and perplexity."""
    plt = _plt()
    variants = list(metrics)
    keys = [("exact_match", "exact match"), ("f1", "token F1"), ("perplexity", "perplexity")]
    keys = [(k, label) for k, label in keys if all(k in metrics[v] for v in variants)]
    fig, axes = plt.subplots(1, len(keys), figsize=(3.4 * len(keys), 3.6), squeeze=False)
    for ax, (key, label) in zip(axes[0], keys, strict=True):
        vals = [metrics[v][key] for v in variants]
        bars = ax.bar(variants, vals, color=["#8a8a8a", "#2b7bb9", "#e08a2b"][: len(variants)])
        ax.bar_label(bars, fmt="%.3g")
        d = compare["deltas"].get(key)
        title = label
        if d:
            title += f"\nΔ {d['delta']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]"
        ax.set_title(title, fontsize=9)
    split = compare.get("split", "test")
    fig.suptitle(f"{split} split: base vs tuned (Δ with paired-bootstrap 95% CI)", fontsize=10)
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
