"""End to end on tiny generated data: files, results keys, learning, determinism, reuse."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import yaml

from conftest import tiny_config, write_config
from mmdistill.cli import main
from mmdistill.preflight import load_config
from mmdistill.run.experiment import run_experiment


@pytest.fixture(scope="module")
def finished_run(demo_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    raw = tiny_config(demo_root, out / "runs", text_teacher=True)
    raw["training"]["teacher"]["epochs"] = 4
    path = write_config(out / "config.yaml", raw)
    assert main(["run", str(path)]) == 0
    return out / "runs" / "tiny", path


def test_run_directory_has_every_artifact(finished_run):
    run_dir, _ = finished_run
    for name in ["config.yaml", "results.json", "metrics.csv", "plots/curves.png",
                 "checkpoints/teacher_best.safetensors", "checkpoints/student_best.safetensors",
                 "checkpoints/baseline_best.safetensors"]:
        assert (run_dir / name).is_file(), name
    for stage in ("teacher", "student", "baseline"):
        for task in ("finding", "urgent"):
            for split in ("dev", "test"):  # dev beside test, as seed 000 saved both
                matrix = np.load(run_dir / "confusion" / f"{stage}_{task}_{split}.npy")
                assert matrix.sum() == 32  # every sample of the split counted once
                assert (run_dir / "plots" / f"confusion_{stage}_{task}_{split}.png").stat().st_size > 1000
    assert not list(run_dir.rglob("*.tmp"))


def test_results_json_has_the_public_keys(finished_run):
    results = json.loads((finished_run[0] / "results.json").read_text())
    assert {"experiment", "seed", "teacher", "student", "baseline", "timing", "params"} <= set(results)
    for stage in ("teacher", "student", "baseline"):
        for split in ("dev", "test"):
            m = results[stage][split]
            assert 0.0 <= m["score"] <= 1.0
            assert m["score"] == pytest.approx(np.mean([m["tasks"][t]["f1"] for t in ("finding", "urgent")]))
            assert {"f1", "f1_macro", "accuracy", "f1_per_class", "auroc"} <= set(m["tasks"]["finding"])
            assert m["tasks"]["finding"]["f1"] == m["tasks"]["finding"]["f1_macro"]
            urgent = m["tasks"]["urgent"]  # binary: the headline is the positive class's F1
            assert urgent["f1"] == urgent["f1_positive"] == urgent["f1_per_class"]["1"]
            assert set(m["tasks"]["finding"]["f1_per_class"]) == {"horizontal_mild", "horizontal_severe",
                                                                    "vertical_mild", "vertical_severe"}
            assert "auroc" in m["tasks"]["urgent"]
    assert {"teacher", "student", "baseline", "total"} <= set(results["timing"])
    assert results["params"]["teacher"] > results["params"]["student"] > 0


def test_metrics_csv_has_a_row_per_epoch_per_stage_and_loss_falls(finished_run):
    rows = list(csv.DictReader((finished_run[0] / "metrics.csv").open()))
    stages = [r["stage"] for r in rows]
    assert stages.count("teacher") == 4 and stages.count("student") == 2 and stages.count("baseline") == 2
    teacher_loss = [float(r["train_loss"]) for r in rows if r["stage"] == "teacher"]
    assert teacher_loss[-1] < teacher_loss[0]
    kd_rows = [r for r in rows if r["stage"] == "student"]
    assert float(kd_rows[0]["train_kd_logits"]) > 0  # the KD term is really in the student's loss


def test_teacher_checkpoint_is_reused_instead_of_training(finished_run, tmp_path):
    run_dir, config_path = finished_run
    first = json.loads((run_dir / "results.json").read_text())
    config = load_config(config_path, [f"teacher.checkpoint={run_dir / 'checkpoints' / 'teacher_best.safetensors'}",
                                       f"output_dir={tmp_path}", "training.baseline=false"])
    results = run_experiment(config)
    assert results["teacher"]["test"]["score"] == pytest.approx(first["teacher"]["test"]["score"])
    assert results["student"]["test"] == first["student"]["test"]  # same teacher, same seed: same student
    rows = list(csv.DictReader((tmp_path / "tiny" / "metrics.csv").open()))
    assert {r["stage"] for r in rows} == {"student"}
    assert "baseline" not in results


def test_same_config_and_seed_give_the_same_metrics(demo_root, tmp_path):
    results = []
    for name in ("a", "b"):
        raw = tiny_config(demo_root, tmp_path / name)
        config = load_config(write_config(tmp_path / f"{name}.yaml", raw))
        results.append(run_experiment(config))
    for stage in ("teacher", "student", "baseline"):
        assert results[0][stage]["test"] == results[1][stage]["test"]
        assert results[0][stage]["dev"] == results[1][stage]["dev"]
    loss = lambda d: [r["train_loss"] for r in csv.DictReader((tmp_path / d / "tiny" / "metrics.csv").open())]
    assert loss("a") == loss("b")


def test_finished_run_is_not_overwritten_without_flag(finished_run, capsys):
    """The same command again finds the run finished and changes nothing; another config in the
    same directory is refused unless --overwrite."""
    run_dir, config_path = finished_run
    before = (run_dir / "results.json").read_bytes()
    assert main(["run", str(config_path)]) == 0
    assert main(["run", str(config_path), "--set", "training.student.epochs=3"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (run_dir / "results.json").read_bytes() == before


def test_a_students_checkpoint_teaches_the_next_student_as_a_teacher_assistant(finished_run, tmp_path):
    """The teacher-assistant chain (teacher -> TA -> student) is two runs: the second declares the
    first's student as its teacher and loads its checkpoint; the TA is scored as it was."""
    run_dir, config_path = finished_run
    first = json.loads((run_dir / "results.json").read_text())
    raw = yaml.safe_load(config_path.read_text())
    raw["teacher"] = {**raw["student"], "checkpoint": str(run_dir / "checkpoints" / "student_best.safetensors")}
    raw["output_dir"] = str(tmp_path)
    raw["training"]["baseline"] = False
    results = run_experiment(load_config(write_config(tmp_path / "ta.yaml", raw)))
    assert results["teacher"]["test"]["score"] == pytest.approx(first["student"]["test"]["score"])
    assert results["params"]["teacher"] == first["params"]["student"]
