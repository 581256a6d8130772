"""Per-task metrics from logits and labels, with scikit-learn doing the arithmetic.

Each task has one headline F1, `f1`, and the run's `score` is the mean of the tasks' headlines:
it is what selects the best epoch (unless `training.<stage>.monitor` says otherwise), what
sweeps tune on and what the reports compare.

- multiclass: macro F1 over the classes present in the evaluated split's truth or predictions
  (scikit-learn's default). A class absent from both has no F1 to average: counting it as 0
  would score a perfect model 0.667 on a dev split that lacks one of three classes. Macro
  averaging keeps a rare class (an uncommon location) from vanishing.
- binary: the positive class's F1, as seed 002 reports `f1_fire` and `f1_smoke`. A model that
  never predicts smoke scores 0 on smoke; the two-class macro F1 (`f1_macro`, reported beside
  it) would give it about 0.45 on an imbalanced split and hide exactly that failure.

Beside the headline: accuracy, per-class F1 (null for a class absent from both truth and
predictions), AUROC (binary; one-vs-rest macro over the classes present in truth for
multiclass), the confusion matrix and the class list.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, roc_auc_score

from mmdistill.data.labels import TaskInfo

# What `score` is, in the words every report prints beside it (run, sweep and compress
# reports): one phrase, so no report can go on calling a binary task's score "macro F1".
SCORE_MEANING = ("mean over tasks of the headline F1 (positive-class F1 for a binary task, macro F1 over "
                 "the classes present for a multiclass one)")


def predictions(task: TaskInfo, logits: torch.Tensor) -> np.ndarray:
    if task.type == "binary":
        return (logits > 0).long().cpu().numpy()
    return logits.argmax(-1).cpu().numpy()


def headline_f1(task: TaskInfo, y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """The task's headline F1 (see the module docstring): positive-class F1 for a binary task,
    macro F1 over the classes present in truth or predictions for a multiclass one."""
    if task.type == "binary":
        return float(f1_score(y_true, y_pred, pos_label=1, average="binary", zero_division=0))
    return float(f1_score(y_true, y_pred, average="macro", zero_division=0))


def _per_class(task: TaskInfo, y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float | None]:
    class_ids = list(range(len(task.classes)))
    values = f1_score(y_true, y_pred, labels=class_ids, average=None, zero_division=0)
    seen = set(y_true.tolist()) | set(y_pred.tolist())
    return {c: (float(f) if i in seen else None) for i, (c, f) in enumerate(zip(task.classes, values))}


def _auroc(task: TaskInfo, logits: torch.Tensor, y_true: np.ndarray) -> float | None:
    """Binary: AUROC of the positive probability. Multiclass: one-vs-rest AUROC of each class
    present in the truth, averaged (macro); None when fewer than two classes are present."""
    present = sorted(set(y_true.tolist()))
    if len(present) < 2:
        return None
    if task.type == "binary":
        return float(roc_auc_score(y_true, torch.sigmoid(logits.float()).cpu().numpy()))
    probs = torch.softmax(logits.float(), dim=-1).cpu().numpy()
    return float(np.mean([roc_auc_score(y_true == c, probs[:, c]) for c in present]))


def task_metrics(task: TaskInfo, logits: torch.Tensor, labels: torch.Tensor) -> dict[str, Any]:
    y_true = labels.long().cpu().numpy()
    y_pred = predictions(task, logits)
    out: dict[str, Any] = {"f1": headline_f1(task, y_true, y_pred)}
    if task.type == "binary":
        out["f1_positive"] = out["f1"]
    out.update({
        "f1_macro": float(f1_score(y_true, y_pred, average="macro", zero_division=0)),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "f1_per_class": _per_class(task, y_true, y_pred),
        "auroc": _auroc(task, logits, y_true),
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=list(range(len(task.classes)))).tolist(),
        "classes": list(task.classes),
        "n": int(len(y_true)),
    })
    return out


def evaluate(tasks: list[TaskInfo], logits: dict[str, torch.Tensor], labels: dict[str, torch.Tensor]) -> dict[str, Any]:
    """M = {"score": mean over tasks of the headline F1, "accuracy": mean over tasks of the
    accuracy, "tasks": {task: metrics}}."""
    per_task = {t.name: task_metrics(t, logits[t.name], labels[t.name]) for t in tasks}
    return {"score": float(np.mean([m["f1"] for m in per_task.values()])),
            "accuracy": float(np.mean([m["accuracy"] for m in per_task.values()])), "tasks": per_task}
