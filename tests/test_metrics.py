"""The headline metric of each task type, as the seeds reported it (eval/metrics.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from mmdistill.data.labels import TaskInfo
from mmdistill.eval.metrics import evaluate, task_metrics

SMOKE = TaskInfo("smoke", "binary", ("0", "1"))
LOCATION = TaskInfo("location", "multiclass", ("a", "b", "c"))


def test_a_binary_task_that_never_predicts_positive_scores_zero():
    """Seed 002's "Student F1 smoke = 0.0": 10 smoky images of 100, none detected. The two-class
    macro F1 would call that about 0.47; the headline is the positive class's F1."""
    labels = torch.tensor([1.0] * 10 + [0.0] * 90)
    logits = torch.full((100,), -3.0)
    m = task_metrics(SMOKE, logits, labels)
    assert m["f1"] == m["f1_positive"] == 0.0
    assert m["f1_macro"] == pytest.approx(0.5 * 2 * 0.9 / 1.9)  # the negative class's F1, halved
    assert m["accuracy"] == 0.9


def test_binary_headline_is_the_positive_class_f1():
    labels = torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0, 0.0])
    logits = torch.tensor([2.0, 2.0, -2.0, 2.0, -2.0, -2.0])  # tp 2, fn 1, fp 1: F1 = 2/3
    m = task_metrics(SMOKE, logits, labels)
    assert m["f1"] == pytest.approx(2 / 3) and m["f1_per_class"]["1"] == pytest.approx(2 / 3)


def test_macro_f1_ignores_a_class_absent_from_truth_and_predictions():
    """A perfect model on a dev split without class c: 1.0, not 0.667."""
    labels = torch.tensor([0, 1, 0, 1])
    logits = torch.nn.functional.one_hot(labels, 3).float() * 5
    m = task_metrics(LOCATION, logits, labels)
    assert m["f1"] == m["f1_macro"] == 1.0
    assert m["f1_per_class"] == {"a": 1.0, "b": 1.0, "c": None}


def test_a_class_predicted_but_absent_from_truth_still_counts():
    labels = torch.tensor([0, 0, 1, 1])
    logits = torch.nn.functional.one_hot(torch.tensor([0, 2, 1, 1]), 3).float() * 5
    m = task_metrics(LOCATION, logits, labels)
    assert m["f1"] == pytest.approx(np.mean([2 / 3, 1.0, 0.0]))  # c's false positive costs: F1 0


def test_multiclass_auroc_is_one_vs_rest_macro():
    gen = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 3, (60,), generator=gen)
    logits = torch.randn(60, 3, generator=gen) + 2 * torch.nn.functional.one_hot(labels, 3)
    probs = torch.softmax(logits, -1).numpy()
    expected = roc_auc_score(labels.numpy(), probs, multi_class="ovr", average="macro")
    assert task_metrics(LOCATION, logits, labels)["auroc"] == pytest.approx(expected)
    one_class = task_metrics(LOCATION, logits[:5], torch.zeros(5, dtype=torch.long))
    assert one_class["auroc"] is None


def test_score_is_the_mean_of_the_headlines():
    out = evaluate([SMOKE, LOCATION], {"smoke": torch.full((4,), -3.0), "location": torch.eye(3)[[0, 1, 0, 1]] * 5},
                   {"smoke": torch.tensor([1.0, 0, 0, 0]), "location": torch.tensor([0, 1, 0, 1])})
    assert out["score"] == pytest.approx((0.0 + 1.0) / 2)
    assert out["accuracy"] == pytest.approx((0.75 + 1.0) / 2)


def test_the_compress_report_says_what_score_is():
    """compress.md is what seed 002's user reads to see what the edge student costs: its score
    must be described as the headline F1 (positive-class for fire and smoke), not macro F1."""
    from mmdistill.compress.report import markdown

    settings = {"cpu": "cpu", "threads": 1, "torch": "t", "onnxruntime": "o", "repeats": 8, "warmup": 1}
    text = markdown("fire_smoke", {}, settings, [])
    assert "positive-class F1 for a binary task" in text and "mean over tasks of macro F1" not in text
