"""Plots of a run: confusion matrices and training curves, rendered without a display."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
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
    ax_score.set(title="dev score (mean over tasks of the headline F1)", xlabel="epoch")
    for ax in (ax_loss, ax_score):
        ax.grid(alpha=0.3)
        ax.legend()
    _save(fig, path)


def plot_scatter(xy: np.ndarray, labels: np.ndarray, classes: list[str], title: str, path: Path) -> None:
    """A 2-D embedding map, one colour per class (tab10, then tab20 beyond ten classes)."""
    fig, ax = plt.subplots(figsize=(5.2, 4.6))
    cmap = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
    for k, name in enumerate(classes):
        mask = labels == k
        if mask.any():
            ax.scatter(xy[mask, 0], xy[mask, 1], s=12, color=cmap(k % cmap.N), label=name, alpha=0.8)
    ax.set(title=title, xticks=[], yticks=[])
    if len(classes) <= 20:
        ax.legend(fontsize=7, loc="best")
    _save(fig, path)


def _number(value) -> float:
    """metrics.csv cells: numbers from MetricsLog.rows, strings when read back, '' when absent."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def curve_columns(columns: list[str]) -> tuple[list[str], list[str]]:
    """(loss-term columns, per-task dev F1 columns) of metrics.csv: train_<term> but not
    train_loss (drawn apart) or train_seconds (a duration); dev_<task>_f1 (each task's headline F1)."""
    terms = [c for c in columns if c.startswith("train_") and c != "train_loss" and not c.endswith("_seconds")]
    return terms, [c for c in columns if c.startswith("dev_") and c.endswith("_f1")]


def plot_stage_curves(rows: list[dict], plots_dir: Path) -> list[Path]:
    """plots/{stage}_training_curves.png per stage (seed 002's teacher_training_curves.png):
    the train loss with each weighted loss term, the dev score with each task's headline F1, and
    the learning rate. Columns follow train/recorder.py: train_<term>, dev_<task>_f1, lr
    (train_seconds and seconds are timings, not drawn)."""
    written = []
    for stage in dict.fromkeys(r["stage"] for r in rows):
        mine = [r for r in rows if r["stage"] == stage]
        epochs = [_number(r["epoch"]) for r in mine]
        terms, tasks = curve_columns(list(dict.fromkeys(k for r in mine for k in r)))
        fig, (ax_loss, ax_score, ax_lr) = plt.subplots(1, 3, figsize=(14, 3.8))
        ax_loss.plot(epochs, [_number(r.get("train_loss")) for r in mine], marker="o", label="loss", color="black")
        for c in terms:
            ax_loss.plot(epochs, [_number(r.get(c)) for r in mine], marker=".", linestyle="--",
                         label=c.removeprefix("train_"))
        ax_score.plot(epochs, [_number(r.get("dev_score")) for r in mine], marker="o", label="score", color="black")
        for c in tasks:
            ax_score.plot(epochs, [_number(r.get(c)) for r in mine], marker=".", linestyle="--",
                          label=c.removeprefix("dev_").removesuffix("_f1"))
        ax_lr.plot(epochs, [_number(r.get("lr")) for r in mine], marker="o", color="tab:gray")
        ax_loss.set(title=f"{stage}: train loss", xlabel="epoch")
        ax_score.set(title=f"{stage}: dev F1 (score and per task)", xlabel="epoch")
        ax_lr.set(title=f"{stage}: learning rate", xlabel="epoch")
        for ax in (ax_loss, ax_score, ax_lr):
            ax.grid(alpha=0.3)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax_loss.legend(fontsize=7)
        ax_score.legend(fontsize=7)
        path = Path(plots_dir) / f"{stage}_training_curves.png"
        _save(fig, path)
        written.append(path)
    return written
