"""Downstream evaluation of frozen embeddings: a linear probe and a k-NN classifier (seed 003).

The heads of a distilled student say how well it copies the teacher's *outputs*; the probes say
how useful its *vectors* are on their own. The two probes answer different questions: the
linear probe asks whether the classes are linearly separable (what a new head on top would
get), k-NN whether same-class samples sit together by angle, which survives a non-linear
layout that defeats a linear head. Both are reported, with macro F1 as everywhere else.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from mmdistill.data.labels import TaskInfo

if TYPE_CHECKING:
    from mmdistill.data.dataset import DataBundle


class _Constant:
    """What any classifier learns from a train split with one class: that class."""

    def __init__(self, label: int):
        self.label = label

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.full(len(x), self.label, dtype=np.int64)


def _linear(x: np.ndarray, y: np.ndarray, seed: int):
    if len(np.unique(y)) < 2:  # LogisticRegression refuses a single class
        return _Constant(int(y[0]))
    # standardised features: the probe's regularisation then treats every dimension alike
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=seed))
    return model.fit(x, y)


def _knn(x: np.ndarray, y: np.ndarray, k: int):
    # cosine: embeddings trained with normalised projections carry their meaning in direction
    return KNeighborsClassifier(n_neighbors=max(1, min(k, len(x))), metric="cosine").fit(x, y)


def _scores(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> tuple[float, float]:
    f1 = f1_score(y_true, y_pred, labels=list(range(n_classes)), average="macro", zero_division=0)
    return float(f1), float(accuracy_score(y_true, y_pred))


def probe_scores(train_x: np.ndarray, train_y: dict[str, np.ndarray], eval_x: np.ndarray,
                 eval_y: dict[str, np.ndarray], tasks: Sequence[TaskInfo], k: int = 5, seed: int = 0) -> dict[str, Any]:
    """Fit both probes on (train_x, train_y) and score them on (eval_x, eval_y), per task.

    Labels are as the datasets hold them (binary 0/1 floats, multiclass class indices). Macro F1
    averages over all of the task's classes, so a class the probe never predicts counts as 0.
    Returns {"score": mean linear-probe macro F1 over tasks, "tasks": {task: {...}}}.
    """
    train_x = np.asarray(train_x, dtype=np.float64)
    eval_x = np.asarray(eval_x, dtype=np.float64)
    if len(train_x) == 0 or len(eval_x) == 0:
        raise ValueError(f"probe needs samples to fit and to score: got {len(train_x)} train, {len(eval_x)} eval")
    per_task: dict[str, Any] = {}
    for task in tasks:
        y_fit = np.asarray(train_y[task.name]).astype(np.int64)
        y_true = np.asarray(eval_y[task.name]).astype(np.int64)
        n_classes = len(task.classes)
        f1, acc = _scores(y_true, _linear(train_x, y_fit, seed).predict(eval_x), n_classes)
        knn_f1, knn_acc = _scores(y_true, _knn(train_x, y_fit, k).predict(eval_x), n_classes)
        per_task[task.name] = {"f1_macro": f1, "accuracy": acc, "knn_f1_macro": knn_f1, "knn_accuracy": knn_acc,
                               "classes": list(task.classes), "n": int(len(y_true))}
    return {"score": float(np.mean([m["f1_macro"] for m in per_task.values()])), "tasks": per_task}


def probe_splits(features: dict[str, np.ndarray], data: "DataBundle", seed: int) -> dict[str, Any]:
    """{"dev": M, "test": M}: probes fit on `features["train"]`, scored on dev and test. Used
    for a precomputed teacher (its embeddings are all there is of it) and for the student of a
    feature-KD run, so both are scored by the same procedure on the same splits."""
    labels = {split: {t.name: np.asarray(ds.labels[t.name]) for t in data.tasks} for split, ds in data.datasets.items()}
    return {split: probe_scores(features["train"], labels["train"], features[split], labels[split], data.tasks,
                                seed=seed)
            for split in ("dev", "test")}
