"""Plots of a run: confusion matrices and training curves, rendered without a display."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from mmdistill.io import atomic_path  # noqa: E402


def _save(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def plot_confusion(matrix: np.ndarray, classes: list[str], title: str, path: Path) -> None:
    size = max(3.5, 0.6 * len(classes) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    top = matrix.max() if matrix.size else 0
    for (i, j), v in np.ndenumerate(matrix):
        ax.text(j, i, str(v), ha="center", va="center", color="white" if v > top / 2 else "black")
    _save(fig, path)


def plot_curves(rows: list[dict], path: Path) -> None:
    """Train loss and dev score per epoch, one line per stage."""
    fig, (ax_loss, ax_score) = plt.subplots(1, 2, figsize=(10, 3.8))
    for stage in dict.fromkeys(r["stage"] for r in rows):
        mine = [r for r in rows if r["stage"] == stage]
        epochs = [r["epoch"] for r in mine]
        ax_loss.plot(epochs, [r["train_loss"] for r in mine], marker="o", label=stage)
        ax_score.plot(epochs, [r["dev_score"] for r in mine], marker="o", label=stage)
    ax_loss.set(title="train loss", xlabel="epoch")
    ax_score.set(title="dev score (mean macro F1)", xlabel="epoch")
    for ax in (ax_loss, ax_score):
        ax.grid(alpha=0.3)
        ax.legend()
    _save(fig, path)
