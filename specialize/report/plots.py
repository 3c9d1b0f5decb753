"""PNG plots a person would rather look at than read: the loss curve, the histogram of
embedding similarity, and the shared matplotlib set-up (headless Agg backend) that every plot
of the project uses.

The metric comparison chart is ``report.eval_report.metrics_chart``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from specialize.io import atomic_path


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend: no display on servers and in CI."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def loss_curve(history: dict[str, Any], out: Path) -> None:
    plt = pyplot()
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


def plot_similarity(stats_by_variant: dict[str, dict[str, Any]], out: Path) -> None:
    """Overlaid histograms of pairwise abstract similarity, one line per variant, as a PNG.

    Each variant's histogram has its own bin edges (its observed range), so they are drawn as
    densities: areas stay comparable even when one model's similarities are squeezed into a
    much narrower band. The legend carries each variant's anisotropy.
    """
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(7, 4))
    colors = ["#8a8a8a", "#2b7bb9", "#e08a2b", "#3a9e4f", "#b94a8a"]
    for i, (name, stats) in enumerate(stats_by_variant.items()):
        edges = np.asarray(stats["bins"], float)
        counts = np.asarray(stats["counts"], float)
        widths = np.diff(edges)
        total = counts.sum()
        density = np.divide(
            counts, total * widths, out=np.zeros_like(counts), where=(widths > 0) & (total > 0)
        )
        label = f"{name} (anisotropy {stats['anisotropy']:.3f})"
        color = colors[i % len(colors)]
        ax.stairs(density, edges, label=label, color=color, lw=1.6, fill=False)
        ax.stairs(density, edges, color=color, alpha=0.15, fill=True)
    ax.set_xlabel("cosine similarity between different abstracts")
    ax.set_ylabel("density")
    ax.set_title("Pairwise embedding similarity (narrow and near 1 = collapsed)")
    ax.grid(alpha=0.3)
    if stats_by_variant:
        ax.legend()
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
