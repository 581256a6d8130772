"""Per-task metrics from logits and labels, with scikit-learn doing the arithmetic.

The run's score is the mean over tasks of macro F1: it is what every seed selected its best
epoch on, and macro averaging keeps a rare class (smoke, an uncommon location) from vanishing.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, roc_auc_score

from mmdistill.data.labels import TaskInfo


def predictions(task: TaskInfo, logits: torch.Tensor) -> np.ndarray:
    if task.type == "binary":
        return (logits > 0).long().cpu().numpy()
    return logits.argmax(-1).cpu().numpy()


def task_metrics(task: TaskInfo, logits: torch.Tensor, labels: torch.Tensor) -> dict[str, Any]:
    y_true = labels.long().cpu().numpy()
    y_pred = predictions(task, logits)
    class_ids = list(range(len(task.classes)))
    per_class = f1_score(y_true, y_pred, labels=class_ids, average=None, zero_division=0)
    out: dict[str, Any] = {
        "f1_macro": float(f1_score(y_true, y_pred, labels=class_ids, average="macro", zero_division=0)),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "f1_per_class": {c: float(f) for c, f in zip(task.classes, per_class)},
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=class_ids).tolist(),
        "classes": list(task.classes),
        "n": int(len(y_true)),
    }
    if task.type == "binary":
        scores = torch.sigmoid(logits.float()).cpu().numpy()
        out["auroc"] = float(roc_auc_score(y_true, scores)) if len(set(y_true.tolist())) == 2 else None
    return out


def evaluate(tasks: list[TaskInfo], logits: dict[str, torch.Tensor], labels: dict[str, torch.Tensor]) -> dict[str, Any]:
    """M = {"score": mean macro F1 over tasks, "tasks": {task: metrics}}."""
    per_task = {t.name: task_metrics(t, logits[t.name], labels[t.name]) for t in tasks}
    return {"score": float(np.mean([m["f1_macro"] for m in per_task.values()])), "tasks": per_task}
