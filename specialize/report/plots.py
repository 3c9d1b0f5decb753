"""PNG plots a person would rather look at than read: the loss curve, and the shared
matplotlib set-up (headless Agg backend) that every plot of the project uses.

The metric comparison chart is ``report.eval_report.metrics_chart``; the similarity histogram
is ``evaluate.embeddings.plot_similarity``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

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
