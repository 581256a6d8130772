"""`training.<stage>.monitor`: the dev metric that picks the best epoch, stops a stage early and
ranks a sweep's variants (seed 003 selects on validation loss, seed 004 on accuracy)."""

from __future__ import annotations

import csv

import pytest

from conftest import tiny_config, write_config
from mmdistill.errors import UserError
from mmdistill.preflight import load_config
from mmdistill.run.experiment import run_experiment
from mmdistill.sweep.plan import make_plan


def _rows(run_dir, stage):
    with open(run_dir / "metrics.csv") as f:
        return [r for r in csv.DictReader(f) if r["stage"] == stage]


@pytest.fixture(scope="module")
def loss_run(demo_root, tmp_path_factory):
    """Teacher selected on dev loss; student on dev loss too, and stopped early by an inverted
    one (mode max on a loss that falls), so the stop can only come from the monitor."""
    out = tmp_path_factory.mktemp("monitor")
    raw = tiny_config(demo_root, out / "runs")
    raw["training"]["teacher"].update({"epochs": 4, "monitor": "dev_loss"})
    raw["training"]["student"].update({"epochs": 6, "monitor": "dev_loss", "mode": "max", "patience": 1})
    raw["training"]["baseline"] = False
    raw["logging"]["plots"] = False
    config = load_config(write_config(out / "c.yaml", raw))
    return run_experiment(config), config.run_dir


def test_the_best_epoch_is_the_lowest_dev_loss(loss_run):
    results, run_dir = loss_run
    rows = _rows(run_dir, "teacher")
    losses = [float(r["dev_loss"]) for r in rows]
    assert len(rows) == 4 and all(loss > 0 for loss in losses)
    best = losses.index(min(losses))
    assert results["teacher"]["best_epoch"] == best + 1
    assert results["teacher"]["dev"]["loss"] == pytest.approx(min(losses), abs=1e-6)


def test_early_stopping_follows_the_monitor(loss_run):
    results, run_dir = loss_run
    losses = [float(r["dev_loss"]) for r in _rows(run_dir, "student")]
    # mode max: the best so far is the highest dev loss; patience 1 stops at the first epoch
    # that does not beat it
    stop = next((i for i in range(1, len(losses)) if losses[i] <= max(losses[:i])), len(losses) - 1)
    assert len(losses) == stop + 1 < 6
    assert results["student"]["best_epoch"] == losses.index(max(losses)) + 1


def test_the_kd_students_dev_loss_includes_the_distillation_term(loss_run):
    """Teacher outputs on dev are computed for the dev loss: it is not the task loss alone."""
    results, run_dir = loss_run
    row = _rows(run_dir, "student")[0]
    assert float(row["dev_loss"]) > 0 and "train_kd_logits" in row


def test_unknown_monitor_names_the_key_and_a_task_metric_is_accepted(config_file):
    with pytest.raises(UserError, match=r"training.student.monitor: unknown monitor 'dev_f1'"):
        load_config(config_file, ["training.student.monitor=dev_f1"])
    config = load_config(config_file, ["training.student.monitor=dev_urgent_auroc"])
    assert config.training.student.monitor == "dev_urgent_auroc"


def test_a_sweep_tunes_on_the_students_monitor_unless_told_otherwise(demo_root, tmp_path):
    raw = tiny_config(demo_root, tmp_path / "runs")
    raw["sweep"] = {"grid": {"objective.preset": ["kd", "kl_bce"]}, "seeds": [1]}
    path = write_config(tmp_path / "s.yaml", raw)
    assert make_plan(path, check_runtime=False).tune == {"metric": "student.dev.score", "mode": "max"}
    plan = make_plan(path, ["training.student.monitor=dev_loss"], check_runtime=False)
    assert plan.tune == {"metric": "student.dev.loss", "mode": "min"}
    plan = make_plan(path, ["training.student.monitor=dev_urgent_f1"], check_runtime=False)
    assert plan.tune == {"metric": "student.dev.tasks.urgent.f1", "mode": "max"}
    plan = make_plan(path, ["training.student.monitor=dev_loss", "sweep.tune.metric=student.dev.accuracy"],
                     check_runtime=False)
    assert plan.tune == {"metric": "student.dev.accuracy", "mode": "max"}
