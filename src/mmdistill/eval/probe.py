"""Downstream evaluation of frozen embeddings: a linear probe and a k-NN classifier (seed 003).

The heads of a distilled student say how well it copies the teacher's *outputs*; the probes say
how useful its *vectors* are on their own. The two probes answer different questions: the
linear probe asks whether the classes are linearly separable (what a new head on top would
get), k-NN whether same-class samples sit together by angle, which survives a non-linear
layout that defeats a linear head. Both are reported with the same headline F1 as every other
metric (`eval/metrics.py`: positive-class F1 for a binary task, macro F1 over the classes
present for a multiclass one), and the macro F1 beside it.

On a large train split the probes fit on a draw of `logging.probe_samples` rows
(`eval/sampling.py`: stratified by the first task, seeded by the run's seed) rather than on
all of them: a logistic regression over a million rows, and a k-NN index holding them, cost
far more than what the probe measures needs. They still score the whole dev and test splits:
predicting is one matrix product per split (k-NN: distances to the drawn rows only), and
scoring every test row keeps the probe's test numbers free of sampling noise and on the same
rows as every other model's test metrics, which a sweep compares them with.
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
from mmdistill.eval.metrics import headline_f1
from mmdistill.eval.sampling import sample_rows

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


def _scores(task: TaskInfo, y_true: np.ndarray, y_pred: np.ndarray) -> tuple[float, float, float]:
    """(headline F1, macro F1 over the classes present, accuracy)."""
    return (headline_f1(task, y_true, y_pred), float(f1_score(y_true, y_pred, average="macro", zero_division=0)),
            float(accuracy_score(y_true, y_pred)))


def probe_scores(train_x: np.ndarray, train_y: dict[str, np.ndarray], eval_x: np.ndarray,
                 eval_y: dict[str, np.ndarray], tasks: Sequence[TaskInfo], k: int = 5, seed: int = 0) -> dict[str, Any]:
    """Fit both probes on (train_x, train_y) and score them on (eval_x, eval_y), per task.

    Labels are as the datasets hold them (binary 0/1 floats, multiclass class indices).
    Returns {"score": mean linear-probe headline F1 over tasks, "tasks": {task: {...}}}.
    """
    train_x = np.asarray(train_x, dtype=np.float64)
    eval_x = np.asarray(eval_x, dtype=np.float64)
    if len(train_x) == 0 or len(eval_x) == 0:
        raise ValueError(f"probe needs samples to fit and to score: got {len(train_x)} train, {len(eval_x)} eval")
    per_task: dict[str, Any] = {}
    for task in tasks:
        y_fit = np.asarray(train_y[task.name]).astype(np.int64)
        y_true = np.asarray(eval_y[task.name]).astype(np.int64)
        f1, macro, acc = _scores(task, y_true, _linear(train_x, y_fit, seed).predict(eval_x))
        knn_f1, knn_macro, knn_acc = _scores(task, y_true, _knn(train_x, y_fit, k).predict(eval_x))
        per_task[task.name] = {"f1": f1, "f1_macro": macro, "accuracy": acc, "knn_f1": knn_f1,
                               "knn_f1_macro": knn_macro, "knn_accuracy": knn_acc,
                               "classes": list(task.classes), "n": int(len(y_true))}
    return {"score": float(np.mean([m["f1"] for m in per_task.values()])), "tasks": per_task}


def probe_rows(data: "DataBundle", seed: int, samples: int | None) -> np.ndarray | None:
    """The train rows the probes fit on: `samples` of them drawn by `seed`, stratified by the
    first task (`eval/sampling.py`); None for all (`samples` 0 or None, or the split is no
    larger). The same for every model of a run, and on every call."""
    train = data.datasets["train"]
    return sample_rows(len(train), samples, seed, strata=train.labels[data.tasks[0].name])


def probe_splits(features: dict[str, np.ndarray], data: "DataBundle", seed: int,
                 samples: int | None = None) -> dict[str, Any]:
    """{"dev": M, "test": M}: probes fit on the train rows `probe_rows(data, seed, samples)`,
    scored on the whole dev and test splits. Used for a precomputed teacher (its embeddings
    are all there is of it) and for the student of a feature-KD run, so both are scored by the
    same procedure on the same rows.

    `features["train"]` is either the whole train split (the rows are taken from it) or
    already just those rows, in their order (`probe_features` collects only them)."""
    labels = {split: {t.name: np.asarray(ds.labels[t.name]) for t in data.tasks} for split, ds in data.datasets.items()}
    train_x, train_y = features["train"], labels["train"]
    rows = probe_rows(data, seed, samples)
    if rows is not None:
        train_y = {name: y[rows] for name, y in train_y.items()}
        if len(train_x) == len(data.datasets["train"]):
            train_x = np.asarray(train_x)[rows]
        elif len(train_x) != len(rows):
            raise ValueError(f"probe train features have {len(train_x)} rows: neither the train split "
                             f"({len(data.datasets['train'])}) nor its {len(rows)} drawn probe rows")
    return {split: probe_scores(train_x, train_y, features[split], labels[split], data.tasks, seed=seed)
            for split in ("dev", "test")}


def probe_features(model: Any, data: "DataBundle", batch_size: int, seed: int, samples: int | None,
                   ref: str = "fused", config: Any = None) -> dict[str, np.ndarray]:
    """{split: vectors} of a model for `probe_splits(..., seed, samples)`: only the drawn probe
    rows of train are embedded, dev and test in full."""
    from mmdistill.eval.embeddings import collect_features

    rows = {"train": probe_rows(data, seed, samples)}
    return {split: collect_features(model, data, split, batch_size, ref, config, rows=rows.get(split))[0]
            for split in data.datasets}
