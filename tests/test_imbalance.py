"""Seed 004's tools for imbalanced data: balanced class weights, weighted sampling, and a
configurable loss for the teacher/baseline stages."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from conftest import tiny_config, write_config
from mmdistill.preflight import load_config
from mmdistill.config.schema import ExperimentConfig
from mmdistill.data.dataset import load_data
from mmdistill.errors import UserError
from mmdistill.losses.terms import LossBatch, TaskLoss, TaskParams
from mmdistill.models.net import ModelOutput, TaskInfo
from mmdistill.run.experiment import run_experiment


def test_balanced_weights_come_from_train_counts():
    tasks = [TaskInfo("m", "multiclass", ("a", "b", "c")), TaskInfo("b", "binary", ("0", "1"))]
    term = TaskLoss(TaskParams(class_weights="balanced", pos_weight="balanced"), tasks, None, None)
    term.set_class_counts({"m": [6, 3, 1], "b": [8, 2]})
    assert term.class_weights["m"] == pytest.approx([10 / 18, 10 / 9, 10 / 3])
    assert term.pos_weight["b"] == pytest.approx(4.0)
    z = np.array([[1.0, 0.0, -1.0], [0.0, 2.0, 0.5]])
    y = np.array([2, 1])
    logp = z - np.log(np.exp(z).sum(1, keepdims=True))
    w = np.array([10 / 18, 10 / 9, 10 / 3])[y]
    expected_ce = -(w * logp[np.arange(2), y]).sum() / w.sum()
    zb, yb = np.array([0.5, -1.0]), np.array([1.0, 0.0])
    p = 1 / (1 + np.exp(-zb))
    expected_bce = np.mean(-(4.0 * yb * np.log(p) + (1 - yb) * np.log(1 - p)))
    out = ModelOutput(logits={"m": torch.tensor(z), "b": torch.tensor(zb)})
    loss = term(out, None, LossBatch({"m": torch.tensor(y), "b": torch.tensor(yb)}))
    assert loss.item() == pytest.approx((expected_ce + expected_bce) / 2, rel=1e-9)


def test_balanced_weights_without_counts_fail_loudly():
    term = TaskLoss(TaskParams(class_weights="balanced"), [TaskInfo("m", "multiclass", ("a", "b"))], None, None)
    with pytest.raises(RuntimeError, match="set_class_counts"):
        term(ModelOutput(logits={"m": torch.zeros(1, 2)}), None, LossBatch({"m": torch.tensor([0])}))


def test_weighted_sampling_draws_classes_equally(demo_root, tmp_path):
    data = load_data(ExperimentConfig.model_validate(tiny_config(demo_root, tmp_path)))
    labels = np.asarray(data.datasets["train"].labels["urgent"])
    assert labels.mean() < 0.35  # the demo's urgent class is rare
    drawn = []
    for seed in range(30):
        for batch in data.loader("train", 64, shuffle=True, seed=seed, balance_task="urgent"):
            drawn += batch["labels"]["urgent"].tolist()
    assert 0.45 < np.mean(drawn) < 0.55


def test_supervised_loss_is_used_by_teacher_and_baseline(demo_root, tmp_path):
    raw = tiny_config(demo_root, tmp_path / "runs")
    raw["objective"]["supervised"] = [{"term": "focal", "params": {"gamma": 2.0}},
                                      {"term": "task", "weight": 0.5, "params": {"class_weights": "balanced"}}]
    raw["training"]["teacher"]["weighted_sampling"] = "finding"
    raw["training"]["teacher"]["epochs"] = 1
    raw["training"]["student"]["epochs"] = 1
    run_experiment(load_config(write_config(tmp_path / "c.yaml", raw)))
    rows = list(csv.DictReader((tmp_path / "runs" / "tiny" / "metrics.csv").open()))
    by_stage = {r["stage"]: r for r in rows}
    assert by_stage["teacher"]["train_focal"] and by_stage["baseline"]["train_focal"]
    assert not by_stage["student"]["train_focal"]  # the KD stage keeps its own objective


def test_supervised_loss_cannot_need_a_teacher(demo_root, tmp_path):
    raw = tiny_config(demo_root, tmp_path / "runs")
    raw["objective"]["supervised"] = [{"term": "kd_logits"}]
    with pytest.raises(UserError, match=r"objective\.supervised\.0\.term: 'kd_logits' needs a teacher"):
        load_config(write_config(tmp_path / "c.yaml", raw))


def test_weighted_sampling_must_name_a_task(config_file):
    with pytest.raises(UserError, match=r"training\.student\.weighted_sampling: no task 'size'"):
        load_config(config_file, ["training.student.weighted_sampling=size"])
