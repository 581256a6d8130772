"""The report's figures, each rendered to PNG bytes (embedded in report.html as base64 and
written beside report.md)."""

from __future__ import annotations

import io
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

STAGE_COLORS = {"teacher": "tab:green", "student": "tab:blue", "baseline": "tab:orange"}
STAGE_LABELS = {"teacher": "teacher", "student": "KD student", "baseline": "baseline student"}


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def score_bars(variants: Sequence[str], stats: dict[str, dict[str, dict[str, Any]]], metric: str = "test.score") -> bytes:
    """Grouped bars per variant (teacher, KD student, baseline): mean with its 95% CI."""
    roles = [r for r in ("teacher", "student", "baseline") if any(f"{r}.{metric}" in stats[v] for v in variants)]
    fig, ax = plt.subplots(figsize=(max(5.0, 1.3 * len(variants) * max(1, len(roles)) / 2 + 2), 3.8))
    width = 0.8 / max(1, len(roles))
    x = np.arange(len(variants))
    for i, role in enumerate(roles):
        means, lows, highs = [], [], []
        for v in variants:
            s = stats[v].get(f"{role}.{metric}")
            mean = s["mean"] if s else np.nan
            lo, hi = (s["ci95"] if s and s["ci95"] else (mean, mean))
            means.append(mean)
            lows.append(max(0.0, mean - lo) if np.isfinite(mean) else 0.0)
            highs.append(max(0.0, hi - mean) if np.isfinite(mean) else 0.0)
        ax.bar(x + (i - (len(roles) - 1) / 2) * width, means, width, yerr=[lows, highs], capsize=3,
               color=STAGE_COLORS[role], label=STAGE_LABELS[role])
    ax.set_xticks(x, variants, rotation=20 if len(variants) > 3 else 0, ha="right" if len(variants) > 3 else "center")
    ax.set_ylabel(f"{metric} (mean, 95% CI)")
    ax.set_ylim(0, 1.05)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(f"{metric} per variant")
    return _png(fig)


def training_curves(curves: dict[str, list[tuple[int, list[dict[str, Any]]]]]) -> bytes:
    """One row per variant: train loss and dev score per epoch, one line per stage and seed."""
    names = list(curves)
    fig, axes = plt.subplots(len(names), 2, figsize=(10, 2.8 * len(names)), squeeze=False)
    for row, name in enumerate(names):
        ax_loss, ax_score = axes[row]
        seen = set()
        for seed, rows in curves[name]:
            for stage in dict.fromkeys(r["stage"] for r in rows):
                mine = [r for r in rows if r["stage"] == stage]
                epochs = [float(r["epoch"]) for r in mine]
                label = STAGE_LABELS.get(stage, stage) if stage not in seen else None
                seen.add(stage)
                color = STAGE_COLORS.get(stage, "gray")
                ax_loss.plot(epochs, [_float(r.get("train_loss")) for r in mine], color=color, alpha=0.7, marker=".", label=label)
                ax_score.plot(epochs, [_float(r.get("dev_score")) for r in mine], color=color, alpha=0.7,
                              marker=".", label=label)
        ax_loss.set(title=f"{name}: train loss", xlabel="epoch")
        ax_score.set(title=f"{name}: dev score", xlabel="epoch")
        for ax in (ax_loss, ax_score):
            ax.grid(alpha=0.3)
        if seen:
            ax_score.legend(fontsize=7)
    fig.tight_layout()
    return _png(fig)


def _float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def confusion_grid(items: list[tuple[str, np.ndarray, list[str]]], columns: int) -> bytes:
    """Confusion matrices (title, counts, classes), `columns` per row (one per task)."""
    columns = max(1, min(columns, len(items)))
    rows = (len(items) + columns - 1) // columns
    size = max(3.2, 0.5 * max(len(c) for _, _, c in items) + 2)
    fig, axes = plt.subplots(rows, columns, figsize=(size * columns, size * rows), squeeze=False)
    for ax in axes.flat[len(items):]:
        ax.axis("off")
    for ax, (title, matrix, classes) in zip(axes.flat, items):
        ax.imshow(matrix, cmap="Blues")
        ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right", fontsize=7)
        ax.set_yticks(range(len(classes)), classes, fontsize=7)
        ax.set(xlabel="predicted", ylabel="true", title=title)
        top = matrix.max() if matrix.size else 0
        for (i, j), v in np.ndenumerate(matrix):
            ax.text(j, i, str(int(v)), ha="center", va="center", fontsize=7,
                    color="white" if v > top / 2 else "black")
    fig.tight_layout()
    return _png(fig)


def tsne_plot(points: dict[str, np.ndarray], labels: np.ndarray, classes: list[str], task: str) -> bytes:
    """Side by side 2-D t-SNE maps (e.g. teacher and student fused vectors), colored by class."""
    fig, axes = plt.subplots(1, len(points), figsize=(4.6 * len(points), 4.2), squeeze=False)
    cmap = plt.get_cmap("tab10")
    for ax, (title, xy) in zip(axes[0], points.items()):
        for k, name in enumerate(classes):
            mask = labels == k
            if mask.any():
                ax.scatter(xy[mask, 0], xy[mask, 1], s=12, color=cmap(k % 10), label=name, alpha=0.8)
        ax.set(title=f"{title} (test, by {task})", xticks=[], yticks=[])
    axes[0][-1].legend(fontsize=7, loc="best")
    fig.tight_layout()
    return _png(fig)
