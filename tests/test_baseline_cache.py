"""The baseline student is trained once per student setup, data and seed: a run that differs
only in teacher or KD objective copies it, and the copy is exactly what training would give."""

from __future__ import annotations

import csv
import json
import shutil
import threading

from safetensors import safe_open

from conftest import tiny_config
from mmdistill.cache import baselines as baseline_cache
from mmdistill.config.schema import ExperimentConfig
from mmdistill.train import fit as stage_module
from mmdistill.run.experiment import run_experiment


def _run(demo_root, out, name, preset="kd", baseline_cache=True, text_teacher=False, **student):
    raw = tiny_config(demo_root, out, text_teacher=text_teacher)
    raw["experiment_name"] = name
    raw["objective"] = {"preset": preset}
    raw["logging"]["plots"] = False
    raw["training"]["student"].update(student)
    raw["cache"] = {"baseline": baseline_cache}
    config = ExperimentConfig.model_validate(raw)
    return run_experiment(config), config.run_dir


def _checkpoint(run_dir):
    """Tensors and metadata of a baseline checkpoint. Two separately written files are not compared
    byte for byte: safetensors writes its metadata map in hash order, which differs per process."""
    with safe_open(run_dir / "checkpoints" / "baseline_best.safetensors", framework="pt") as f:
        return f.metadata(), {k: f.get_tensor(k).numpy().tobytes() for k in f.keys()}


def _rows(run_dir, stage):
    with open(run_dir / "metrics.csv") as f:
        return [r for r in csv.DictReader(f) if r["stage"] == stage]


def _trained_stages(monkeypatch):
    names = []
    real = stage_module.train_stage

    def counting(name, *args, **kwargs):
        names.append(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(stage_module, "train_stage", counting)
    return names


def test_a_baseline_is_trained_once_and_equals_a_fresh_one(demo_root, tmp_path, monkeypatch):
    trained = _trained_stages(monkeypatch)
    first, first_dir = _run(demo_root, tmp_path, "kd")
    assert trained == ["teacher", "student", "baseline"]

    trained.clear()  # another KD objective and another teacher: the baseline is copied
    second, second_dir = _run(demo_root, tmp_path, "kl_bce", preset="kl_bce")
    assert trained == ["teacher", "student"]
    assert second["baseline"]["reused_from"].startswith(str(tmp_path / "cache" / "baselines"))
    assert {k: second["baseline"][k] for k in ("dev", "test", "best_epoch")} == \
           {k: first["baseline"][k] for k in ("dev", "test", "best_epoch")}
    assert _rows(second_dir, "baseline") == _rows(first_dir, "baseline") and _rows(second_dir, "baseline")
    assert (second_dir / "checkpoints" / "baseline_best.safetensors").read_bytes() == \
           (first_dir / "checkpoints" / "baseline_best.safetensors").read_bytes()
    assert (second_dir / "confusion" / "baseline_finding_test.npy").is_file()

    trained.clear()  # trained again with the cache off: the same numbers, so sharing changed nothing
    fresh, _ = _run(demo_root, tmp_path, "fresh", preset="kl_bce", baseline_cache=False)
    assert trained == ["teacher", "student", "baseline"]
    assert fresh["baseline"]["test"] == first["baseline"]["test"] and "reused_from" not in fresh["baseline"]

    trained.clear()  # a student setting is the baseline's too: a new key
    _run(demo_root, tmp_path, "lr", lr=1e-3)
    assert trained == ["teacher", "student", "baseline"]
    assert len(list((tmp_path / "cache" / "baselines").iterdir())) == 2


def test_a_teacher_reading_more_modalities_shares_the_students_baseline(demo_root, tmp_path, monkeypatch):
    """The key hashes the student's own columns: the image-only student's baseline trained under
    an image + text teacher is copied under an image-only teacher, and equals the one that
    teacher's run trains itself (the text column changes none of the student's batches)."""
    trained = _trained_stages(monkeypatch)
    with_text, text_dir = _run(demo_root, tmp_path, "text", text_teacher=True)
    assert trained == ["teacher", "student", "baseline"]
    trained.clear()
    image_only, _ = _run(demo_root, tmp_path, "image")
    assert trained == ["teacher", "student"] and "reused_from" in image_only["baseline"]
    trained.clear()
    fresh, fresh_dir = _run(demo_root, tmp_path, "fresh", baseline_cache=False)
    assert trained == ["teacher", "student", "baseline"]
    assert {k: fresh["baseline"][k] for k in ("dev", "test", "best_epoch")} == \
           {k: with_text["baseline"][k] for k in ("dev", "test", "best_epoch")}
    assert _checkpoint(fresh_dir) == _checkpoint(text_dir)


def test_a_damaged_entry_is_trained_again_and_replaced(demo_root, tmp_path, monkeypatch):
    _run(demo_root, tmp_path, "a")
    entry = next((tmp_path / "cache" / "baselines").iterdir())
    (entry / "result.json").write_text('{"key": ')
    trained = _trained_stages(monkeypatch)
    again, _ = _run(demo_root, tmp_path, "b")
    assert trained == ["teacher", "student", "baseline"] and "reused_from" not in again["baseline"]
    assert json.loads((entry / "result.json").read_text())["test"]["score"] == again["baseline"]["test"]["score"]


def test_a_run_waits_for_the_run_training_its_baseline_and_copies_it(demo_root, tmp_path, monkeypatch):
    """Two runs of one seed at once (parallel sweep workers, a SLURM array): the second finds no
    entry while the first trains it, waits on the entry's lock, then copies instead of training."""
    first, _ = _run(demo_root, tmp_path, "a")
    entry = next((tmp_path / "cache" / "baselines").iterdir())
    aside = tmp_path / "aside"
    shutil.move(entry, aside)  # "not stored yet"
    held = baseline_cache.acquire(entry, shared=False)  # "another run is training it"
    assert held is not None
    waiting = threading.Event()
    real_acquire = baseline_cache.acquire

    def acquire(path, shared, blocking=True):
        if blocking:
            waiting.set()
        return real_acquire(path, shared, blocking)

    def finish_training():  # the other run stores its baseline, then lets go of the lock
        if waiting.wait(120):
            shutil.move(aside, entry)
        held.release()

    monkeypatch.setattr(baseline_cache, "acquire", acquire)
    other = threading.Thread(target=finish_training)
    other.start()
    trained = _trained_stages(monkeypatch)
    second, _ = _run(demo_root, tmp_path, "b", preset="kl_bce")
    other.join()
    assert waiting.is_set()
    assert trained == ["teacher", "student"]
    assert second["baseline"]["reused_from"] == str(entry)
    assert second["baseline"]["test"] == first["baseline"]["test"]
