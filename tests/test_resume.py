"""A killed run picks up where it stopped: finished stages are read back, the interrupted one
continues from its last checkpoint, and the results equal those of a run never interrupted."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import tiny_config, write_config
from mmdistill.cli import main

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")


def _config(demo_root, out):
    raw = tiny_config(demo_root, out)
    # ten epochs: the killer polls for the stage's last checkpoint, which exists from the end of
    # epoch 1 to the end of the stage; with five that was under half a second to catch it in
    raw["training"]["teacher"].update(epochs=10, patience=None)
    raw["training"]["student"].update(epochs=10, patience=None)
    raw["logging"]["plots"] = False
    return raw


@pytest.fixture(scope="module")
def uninterrupted(demo_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("whole")
    path = write_config(out / "c.yaml", _config(demo_root, out / "runs"))
    assert main(["run", str(path)]) == 0
    return json.loads((out / "runs" / "tiny" / "results.json").read_text())


def _run(path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "mmdistill", "run", str(path), "--set", "logging.progress_bar=false"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _kill_when(proc: subprocess.Popen, path, timeout: float = 300) -> None:
    """SIGKILL the run as soon as `path` appears (a stage's last checkpoint: mid-stage)."""
    deadline = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, "the checkpoint never appeared"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def _metrics(results):
    return {role: {split: results[role][split] for split in ("dev", "test")} for role in ("teacher", "student", "baseline")}


def _close(a, b, path=""):
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for key in a:
            _close(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, float):
        assert b == pytest.approx(a, abs=1e-6), path
    else:
        assert a == b, path


@pytest.mark.parametrize("stage", ["teacher", "student"])
def test_a_run_killed_mid_stage_resumes_and_ends_as_if_never_killed(demo_root, tmp_path, uninterrupted, stage):
    path = write_config(tmp_path / "c.yaml", _config(demo_root, tmp_path / "runs"))
    run_dir = tmp_path / "runs" / "tiny"
    proc = _run(path)
    _kill_when(proc, run_dir / "checkpoints" / f"{stage}_last.ckpt")
    assert not (run_dir / "results.json").exists()
    teacher_before = (run_dir / "checkpoints" / "teacher_best.safetensors").stat().st_mtime_ns \
        if stage == "student" else None

    again = _run(path)
    out, err = again.communicate()
    assert again.returncode == 0, err
    assert f"resuming the {stage} stage after epoch " in err  # said on the terminal
    resumed_after = int(err.split(f"resuming the {stage} stage after epoch ")[1].split(",")[0])
    assert 1 <= resumed_after < 10  # from its last checkpoint, not from epoch 0
    if stage == "student":  # the teacher was not trained again
        assert "the teacher stage finished earlier" in err
        assert (run_dir / "checkpoints" / "teacher_best.safetensors").stat().st_mtime_ns == teacher_before
    rows = list(csv.DictReader((run_dir / "metrics.csv").open()))
    assert [r["epoch"] for r in rows if r["stage"] == stage] == [str(e) for e in range(1, 11)]  # no epoch lost or doubled
    _close(_metrics(uninterrupted), _metrics(json.loads((run_dir / "results.json").read_text())))
    assert not list((run_dir / "checkpoints").glob("*_last.ckpt"))  # finished stages keep their records instead


def test_a_finished_run_is_not_run_again_and_another_config_is_refused(demo_root, tmp_path, capsys):
    path = write_config(tmp_path / "c.yaml", _config(demo_root, tmp_path / "runs"))
    assert main(["run", str(path)]) == 0
    run_dir = tmp_path / "runs" / "tiny"
    before = (run_dir / "results.json").read_bytes()
    capsys.readouterr()
    assert main(["run", str(path)]) == 0  # the same command again: nothing to do
    assert (run_dir / "results.json").read_bytes() == before
    assert main(["run", str(path), "--set", "training.student.lr=0.01", "--set", "seed=3"]) == 2
    err = capsys.readouterr().err
    assert "seed, training.student.lr differ" in err and "--overwrite" in err
    assert (run_dir / "results.json").read_bytes() == before


def test_overwrite_deletes_only_a_run(demo_root, tmp_path, capsys):
    raw = _config(demo_root, tmp_path / "out")
    raw["experiment_name"] = "precious"
    (tmp_path / "out" / "precious").mkdir(parents=True)
    (tmp_path / "out" / "precious" / "thesis.tex").write_text("years of work")
    assert main(["run", str(write_config(tmp_path / "c.yaml", raw)), "--overwrite"]) == 2
    assert "not an mmdistill run directory" in capsys.readouterr().err
    assert (tmp_path / "out" / "precious" / "thesis.tex").read_text() == "years of work"
    for name in ("", "..", "a/b"):
        assert main(["run", str(path_of(tmp_path, raw, name)), "--overwrite"]) == 2
        assert "experiment_name: must be one plain, non-empty folder name" in capsys.readouterr().err
    assert (tmp_path / "out" / "precious" / "thesis.tex").exists()


def test_overwrite_leaves_a_folder_that_only_looks_like_a_run(demo_root, tmp_path, capsys):
    """Run-like names are not a run: only a marker (or a file only a run writes) lets
    --overwrite delete a directory."""
    raw = _config(demo_root, tmp_path / "out")
    figure = tmp_path / "out" / "tiny" / "plots" / "figure_3.png"
    figure.parent.mkdir(parents=True)
    figure.write_bytes(b"a figure for the paper")
    assert main(["run", str(write_config(tmp_path / "c.yaml", raw)), "--overwrite"]) == 2
    assert "not an mmdistill run directory" in capsys.readouterr().err
    assert figure.read_bytes() == b"a figure for the paper"


def path_of(tmp_path, raw, name):
    return write_config(tmp_path / "n.yaml", {**raw, "experiment_name": name})


def _epoch(recorder, epoch: int, score: float) -> None:
    """One validated epoch as Lightning drives the recorder; the weights saved are `epoch`."""
    from types import SimpleNamespace

    trainer = SimpleNamespace(sanity_checking=False, current_epoch=epoch - 1,
                              optimizers=[SimpleNamespace(param_groups=[{"lr": 0.1}])])
    module = SimpleNamespace(dev_metrics={"score": score, "loss": 1 - score, "accuracy": score, "tasks": {}},
                             train_summary=lambda: {"loss": 0.5}, model=SimpleNamespace(tasks=[], epoch=epoch))
    recorder.on_train_epoch_start(trainer, module)
    recorder.on_validation_start(trainer, module)
    recorder.on_validation_end(trainer, module)


def test_a_resumed_stage_keeps_its_best_checkpoint_and_earlier_rows(tmp_path, monkeypatch):
    """The recorder's state travels in the last checkpoint: after resuming, an epoch worse than
    the best so far must not replace the best weights, and the rows before it stay."""
    import mmdistill.train.recorder as recorder_module
    from mmdistill.train.recorder import EpochRecorder, MetricsLog

    monkeypatch.setattr(recorder_module, "save_weights", lambda model, path: path.write_text(str(model.epoch)))
    best = tmp_path / "checkpoints" / "teacher_best.safetensors"
    best.parent.mkdir()
    first = EpochRecorder("teacher", MetricsLog(tmp_path / "metrics.csv"), best)
    for epoch, score in ((1, 0.5), (2, 0.9), (3, 0.6)):
        _epoch(first, epoch, score)
    state = first.state_dict()  # the last checkpoint, written after epoch 3; then the run is killed

    again = EpochRecorder("teacher", MetricsLog.resume(tmp_path / "metrics.csv"), best)
    again.load_state_dict(state)
    _epoch(again, 4, 0.7)
    assert best.read_text() == "2" and again.best_epoch == 2 and again.best_value == 0.9
    rows = list(csv.DictReader((tmp_path / "metrics.csv").open()))
    assert [(r["epoch"], r["dev_score"]) for r in rows] == [("1", "0.5"), ("2", "0.9"), ("3", "0.6"), ("4", "0.7")]


def test_a_stage_started_from_resume_from_resumes_from_its_own_last_checkpoint(demo_root, tmp_path, capsys):
    """A run whose config says `resume_from`, killed after more epochs, continues from its last
    checkpoint: starting over from `resume_from` would lose them (every time a SLURM job is
    requeued, so a job at its time limit would never finish)."""
    raw = _config(demo_root, tmp_path / "a")
    raw["training"]["teacher"].update(epochs=3, save_every=1, keep_last=3)
    raw["training"].update(baseline=False)
    raw["training"]["student"]["epochs"] = 1
    assert main(["run", str(write_config(tmp_path / "a.yaml", raw))]) == 0
    epochs = tmp_path / "a" / "tiny" / "checkpoints" / "teacher_epochs"

    raw["output_dir"] = str(tmp_path / "b")
    raw["training"]["teacher"].update(save_every=None, resume_from=str(epochs / "epoch001.ckpt"))
    path = write_config(tmp_path / "b.yaml", raw)
    assert main(["run", str(path)]) == 0
    run_dir = tmp_path / "b" / "tiny"
    for name in ("results.json", "stages/teacher.json", "stages/student.json"):  # killed after epoch 2
        (run_dir / name).unlink()
    (run_dir / "checkpoints" / "teacher_last.ckpt").write_bytes((epochs / "epoch002.ckpt").read_bytes())
    capsys.readouterr()
    assert main(["run", str(path)]) == 0
    assert "resuming the teacher stage after epoch 2" in capsys.readouterr().err
    rows = list(csv.DictReader((run_dir / "metrics.csv").open()))
    assert [r["epoch"] for r in rows if r["stage"] == "teacher"] == ["1", "2", "3"]


def test_a_run_directory_is_another_run_when_the_teacher_content_or_the_code_version_changes(demo_root, tmp_path,
                                                                                          monkeypatch):
    """Identity is the teacher checkpoint's content (not its path) and the mmdistill version:
    either changed, the directory is refused instead of resumed."""
    import mmdistill
    from mmdistill.config.schema import ExperimentConfig
    from mmdistill.errors import UserError
    from mmdistill.run.directory import RunDirectory

    checkpoint = tmp_path / "teacher.safetensors"
    checkpoint.write_bytes(b"weights, first training")
    raw = _config(demo_root, tmp_path / "runs")
    raw["teacher"]["checkpoint"] = str(checkpoint)
    config = ExperimentConfig.model_validate(raw)
    directory = RunDirectory(tmp_path / "runs" / "tiny")
    assert directory.prepare(config, data_signature="d") is False
    assert directory.prepare(config, data_signature="d") is True  # the same run: resumed

    checkpoint.write_bytes(b"weights, trained again")  # the same path
    with pytest.raises(UserError, match="the teacher checkpoint's content changed"):
        directory.prepare(config, data_signature="d")
    checkpoint.write_bytes(b"weights, first training")
    monkeypatch.setattr(mmdistill, "__version__", "99.0")
    with pytest.raises(UserError, match="the mmdistill version changed"):
        directory.prepare(config, data_signature="d")
