"""Experiment trackers hold what metrics.csv and results.json hold: TensorBoard event files and
MLflow runs are read back and compared number for number; a missing tracker package stops the
run before anything is written; a tracker that breaks mid-run does not stop the run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import metric_rows, tiny_config, write_config
from mmdistill.cli import main
from mmdistill.tracking import TRACKERS, Tracker


def _config(demo_root, out: Path, trackers: list[str], plots: bool = False) -> dict:
    raw = tiny_config(demo_root, out)
    raw["training"]["teacher"]["epochs"] = 3
    raw["training"]["student"]["epochs"] = 3
    raw["logging"].update(plots=plots, trackers=trackers)
    return raw



@pytest.fixture(scope="module")
def tracked_run(demo_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("tracked")
    path = write_config(out / "c.yaml", _config(demo_root, out / "runs", ["csv", "tensorboard", "mlflow"], plots=True))
    assert main(["run", str(path)]) == 0
    return path, out / "runs", out / "runs" / "tiny"


def test_tensorboard_events_hold_the_metrics_csv_numbers(tracked_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, _, run_dir = tracked_run
    rows = metric_rows(run_dir)
    for stage in ("teacher", "student", "baseline"):
        events = EventAccumulator(str(run_dir / "tensorboard" / stage))
        events.Reload()
        expected = {int(r["epoch"]): float(r["dev_score"]) for r in rows if r["stage"] == stage}
        logged = {e.step: e.value for e in events.Scalars("dev_score")}
        assert logged.keys() == expected.keys(), stage
        for epoch, value in expected.items():
            assert logged[epoch] == pytest.approx(value, rel=1e-6), (stage, epoch)
        assert "train_loss" in events.Tags()["scalars"] and "lr" in events.Tags()["scalars"]
    final = EventAccumulator(str(run_dir / "tensorboard" / "run"))
    final.Reload()
    assert "_hparams_/experiment" in final.PluginTagToContent("hparams"), "the config is not in tensorboard/run"
    results = json.loads((run_dir / "results.json").read_text())
    [score] = final.Scalars("student/test/score")
    assert score.value == pytest.approx(results["student"]["test"]["score"], rel=1e-6)


def test_mlflow_runs_hold_config_epochs_results_and_artifacts(tracked_run):
    import mlflow
    from mlflow.tracking import MlflowClient

    _, runs_root, run_dir = tracked_run
    mlflow.set_tracking_uri((runs_root / "mlruns").as_uri())
    found = mlflow.search_runs(experiment_names=["tiny"], output_format="list")
    parents = [r for r in found if "mlflow.parentRunId" not in r.data.tags]
    children = {r.data.tags["stage"]: r for r in found if r.data.tags.get("mlflow.parentRunId")}
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    parent = parents[0]
    assert set(children) == {"teacher", "student", "baseline"}
    assert all(c.data.tags["mlflow.parentRunId"] == parent.info.run_id for c in children.values())

    results = json.loads((run_dir / "results.json").read_text())
    assert parent.data.params["training.student.lr"] == "0.003"
    assert parent.data.params["objective.preset"] == "kd"
    assert parent.data.metrics["student/test/score"] == pytest.approx(results["student"]["test"]["score"], rel=1e-9)
    assert parent.data.metrics["teacher/dev/score"] == pytest.approx(results["teacher"]["dev"]["score"], rel=1e-9)

    client = MlflowClient()
    rows = metric_rows(run_dir)
    for stage, child in children.items():
        history = {m.step: m.value for m in client.get_metric_history(child.info.run_id, "dev_score")}
        expected = {int(r["epoch"]): float(r["dev_score"]) for r in rows if r["stage"] == stage}
        assert history == pytest.approx(expected, rel=1e-6), stage
        assert child.info.status == "FINISHED"
        assert child.data.metrics["test/score"] == pytest.approx(results[stage]["test"]["score"], rel=1e-9)
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"results.json", "config.yaml", "metrics.csv", "plots"} <= artifacts


def test_a_rerun_continues_the_same_mlflow_run(tracked_run):
    import mlflow

    path, runs_root, _ = tracked_run
    assert main(["run", str(path)]) == 0  # finished: every stage is read back
    mlflow.set_tracking_uri((runs_root / "mlruns").as_uri())
    found = mlflow.search_runs(experiment_names=["tiny"], output_format="list")
    assert len(found) == 4  # still one run and its three stages


def test_a_missing_tracker_package_stops_before_anything_is_written(demo_root, tmp_path, monkeypatch, capsys):
    import mmdistill.tracking.base as base

    real = base.importlib.util.find_spec
    monkeypatch.setattr(base.importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    path = write_config(tmp_path / "c.yaml", _config(demo_root, tmp_path / "runs", ["tensorboard", "mlflow"]))
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert "logging.trackers[1]" in err and "pip install 'mmdistill[mlflow]'" in err
    assert not (tmp_path / "runs").exists()


def test_an_unknown_tracker_is_named(demo_root, tmp_path, capsys):
    path = write_config(tmp_path / "c.yaml", _config(demo_root, tmp_path / "runs", ["csv", "neptune"]))
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert "logging.trackers[1]" in err and "'neptune'" in err and "mlflow" in err


class _Breaks(Tracker):
    name = "breaks"

    def log_epoch(self, stage, epoch, metrics):
        raise ConnectionError("tracking server gone")


def test_a_tracker_that_fails_mid_run_does_not_stop_the_run(demo_root, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(TRACKERS._items, "breaks", _Breaks)
    path = write_config(tmp_path / "c.yaml", _config(demo_root, tmp_path / "runs", ["breaks"]))
    assert main(["run", str(path)]) == 0
    assert "the breaks tracker failed (ConnectionError: tracking server gone)" in capsys.readouterr().err
    assert (tmp_path / "runs" / "tiny" / "results.json").is_file()


def test_wandb_offline_needs_no_network_and_logs_the_run(demo_root, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # nothing listens: any upload attempt would fail
    raw = _config(demo_root, tmp_path / "runs", ["wandb"])
    raw["training"]["student"]["epochs"] = 1
    raw["training"]["teacher"]["epochs"] = 1
    path = write_config(tmp_path / "c.yaml", raw)
    assert main(["run", str(path)]) == 0
    run_dir = tmp_path / "runs" / "tiny"
    run_id = json.loads((run_dir / "trackers.json").read_text())["wandb"]["id"]
    [offline] = (run_dir / "wandb").glob(f"offline-run-*-{run_id}")
    [log] = offline.glob("*.wandb")
    data = log.read_bytes()
    for name in (b"student/dev_score", b"student/epoch", b"student/test/score", b"training.student.lr"):
        assert name in data, name


def test_compressing_a_finished_run_adds_its_numbers_and_table_to_the_mlflow_run(tracked_run):
    import mlflow
    from mlflow.tracking import MlflowClient

    _, runs_root, run_dir = tracked_run
    assert main(["compress", str(run_dir), "--set", "compress.methods=[int8_dynamic]", "--set", "compress.repeats=2",
                 "--set", "compress.warmup=0", "--set", "compress.finetune_epochs=0"]) == 0
    results = json.loads((run_dir / "results.json").read_text())
    mlflow.set_tracking_uri((runs_root / "mlruns").as_uri())
    [parent] = [r for r in mlflow.search_runs(experiment_names=["tiny"], output_format="list")
                if "mlflow.parentRunId" not in r.data.tags]
    assert parent.data.metrics["compressed/int8_dynamic/score"] == pytest.approx(
        results["compressed"]["int8_dynamic"]["score"], rel=1e-9)
    assert "compress.md" in {a.path for a in MlflowClient().list_artifacts(parent.info.run_id)}
