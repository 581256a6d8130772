"""Linear-probe and k-NN scores of embeddings (mmdistill/eval/probe.py)."""

from __future__ import annotations

import numpy as np
import pytest

from mmdistill.eval.probe import probe_scores
from mmdistill.models.net import TaskInfo

MC = TaskInfo("kind", "multiclass", ("a", "b", "c"))


def _clusters(n_per: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Three tight clusters along different axes: separable by a plane and by angle alike."""
    rng = np.random.default_rng(seed)
    centres = 10 * np.eye(3, 6)
    x = np.concatenate([c + rng.normal(0, 0.3, (n_per, 6)) for c in centres])
    return x, np.repeat(np.arange(3), n_per)


def _xor(n_per: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Four point-symmetric sectors, class = quadrant parity (I, III vs II, IV). Every point p
    comes with -p of the same class, so any linear rule without a bias calls exactly one of the
    two right (and the symmetric fit has no bias to use): the linear probe is at 50% accuracy.
    Same-class neighbours by angle are always in the same sector, so cosine k-NN is perfect."""
    rng = np.random.default_rng(seed)
    angle = rng.uniform(np.pi / 12, 5 * np.pi / 12, n_per)  # inside quadrant I, away from the axes
    radius = rng.uniform(1, 3, n_per)
    p = np.stack([radius * np.cos(angle), radius * np.sin(angle)], 1)
    q = p * [-1, 1]  # quadrant II
    x = np.concatenate([p, -p, q, -q])
    return x, np.repeat([0, 0, 1, 1], n_per)


def test_separable_clusters_score_one_for_both_probes():
    train_x, train_y = _clusters(20, 0)
    eval_x, eval_y = _clusters(10, 1)
    out = probe_scores(train_x, {"kind": train_y}, eval_x, {"kind": eval_y}, [MC])
    m = out["tasks"]["kind"]
    assert (m["f1_macro"], m["accuracy"], m["knn_f1_macro"], m["knn_accuracy"]) == (1.0, 1.0, 1.0, 1.0)
    assert m["classes"] == ["a", "b", "c"] and m["n"] == 30
    assert out["score"] == 1.0


def test_knn_and_linear_probe_disagree_on_xor_sectors():
    task = TaskInfo("parity", "multiclass", ("even", "odd"))
    train_x, train_y = _xor(40, 0)
    eval_x, eval_y = _xor(25, 1)
    m = probe_scores(train_x, {"parity": train_y}, eval_x, {"parity": eval_y}, [task])["tasks"]["parity"]
    assert m["knn_f1_macro"] == 1.0 and m["knn_accuracy"] == 1.0
    assert m["accuracy"] <= 0.6 and m["f1_macro"] <= 0.6


def test_binary_task_with_float_labels():
    task = TaskInfo("urgent", "binary", ("no", "yes"))
    train_x, y = _clusters(15, 2)
    eval_x, ey = _clusters(8, 3)
    # classes 0 and 1 -> yes, 2 -> no; labels as the dataset holds binary tasks: 0./1. floats
    out = probe_scores(train_x, {"urgent": (y < 2).astype(np.float32)}, eval_x, {"urgent": (ey < 2).astype(np.float32)},
                       [task])
    m = out["tasks"]["urgent"]
    assert m["f1_macro"] == 1.0 and m["knn_f1_macro"] == 1.0 and m["classes"] == ["no", "yes"]


def test_macro_f1_averages_the_classes_present_and_score_averages_tasks():
    """Class c never occurs in train or eval: macro F1 averages the two classes present, so every
    prediction right is 1.0 (not 2/3); the run score is the mean of the tasks' linear-probe F1."""
    train_x, train_y = _clusters(10, 4)
    eval_x, eval_y = _clusters(5, 5)
    keep, eval_keep = train_y < 2, eval_y < 2
    two = TaskInfo("two", "multiclass", ("a", "b"))
    out = probe_scores(train_x[keep], {"kind": train_y[keep], "two": train_y[keep]}, eval_x[eval_keep],
                       {"kind": eval_y[eval_keep], "two": eval_y[eval_keep]}, [MC, two])
    assert out["tasks"]["kind"]["f1_macro"] == out["tasks"]["kind"]["f1"] == 1.0
    assert out["tasks"]["kind"]["accuracy"] == 1.0
    assert out["tasks"]["two"]["f1_macro"] == 1.0
    assert out["score"] == 1.0


def test_single_class_train_split_predicts_that_class():
    x, _ = _clusters(4, 6)
    task = TaskInfo("kind", "multiclass", ("a", "b"))
    m = probe_scores(x, {"kind": np.zeros(len(x), dtype=np.int64)}, x[:3], {"kind": np.array([0, 1, 0])},
                     [task], k=50)["tasks"]["kind"]
    assert m["accuracy"] == pytest.approx(2 / 3) and m["knn_accuracy"] == pytest.approx(2 / 3)


def test_empty_split_is_an_error_that_says_so():
    with pytest.raises(ValueError, match="0 eval"):
        probe_scores(np.ones((3, 2)), {"kind": np.zeros(3)}, np.ones((0, 2)), {"kind": np.zeros(0)}, [MC])


def _bundle(train_y: np.ndarray, dev_y: np.ndarray, test_y: np.ndarray):
    """What probe_splits reads of a DataBundle: tasks, and each split's length and labels."""
    from types import SimpleNamespace

    class Split(SimpleNamespace):
        def __len__(self):
            return len(self.labels["kind"])

    return SimpleNamespace(tasks=[MC], datasets={s: Split(labels={"kind": y}) for s, y in
                                                 (("train", train_y), ("dev", dev_y), ("test", test_y))})


def test_probes_fit_on_the_drawn_train_rows_and_score_every_test_row(monkeypatch):
    import mmdistill.eval.probe as probe

    train_x, train_y = _clusters(40, 0)
    eval_x, eval_y = _clusters(10, 1)
    data = _bundle(train_y, eval_y, eval_y)
    features = {"train": train_x, "dev": eval_x, "test": eval_x}
    fitted = []
    real = probe._linear
    monkeypatch.setattr(probe, "_linear", lambda x, y, seed: fitted.append(len(x)) or real(x, y, seed))
    out = probe.probe_splits(features, data, seed=3, samples=12)
    assert fitted == [12, 12]  # dev and test: one fit each, on the 12 drawn rows
    assert out["test"]["tasks"]["kind"]["n"] == len(eval_y) and out["test"]["score"] == 1.0
    rows = probe.probe_rows(data, 3, 12)
    assert sorted(np.bincount(train_y[rows])) == [4, 4, 4]  # stratified by the first task
    # the drawn rows alone give the same scores as the whole split they are drawn from
    assert probe.probe_splits({**features, "train": train_x[rows]}, data, seed=3, samples=12) == out
    with pytest.raises(ValueError, match="neither the train split"):
        probe.probe_splits({**features, "train": train_x[:7]}, data, seed=3, samples=12)
    fitted.clear()
    for every in (0, None, 1000):
        probe.probe_splits(features, data, seed=3, samples=every)
    assert fitted == [len(train_y)] * 6
