"""Which augmented views each stage sees: a fresh one every epoch unless `data.views` caps it
for the teacher cache (then a warning says so), the baseline always fresh, and a shuffle order
that does not depend on `num_workers`."""

from __future__ import annotations

import logging

import torch

from conftest import tiny_config
from mmdistill.distributed import compute_device as teacher_device
from mmdistill.config.schema import ExperimentConfig
from mmdistill.data.dataset import load_data
from mmdistill.data.views import cached_views, student_views
from mmdistill.run.experiment import run_experiment
from mmdistill.train import fit
from mmdistill.train.fit import on_cpu

AUGMENT = {"horizontal_flip_prob": 0.5, "rotation_degrees": 10}


def _config(demo_root, out, **data) -> ExperimentConfig:
    raw = tiny_config(demo_root, out)
    raw["data"].update(data)
    raw["training"]["student"]["epochs"] = 3
    raw["logging"]["plots"] = False
    return ExperimentConfig.model_validate(raw)


def test_students_see_a_fresh_view_every_epoch_unless_views_are_capped(demo_root, tmp_path):
    assert student_views(_config(demo_root, tmp_path)) == 1  # no augmentation: the one plain view
    fresh = _config(demo_root, tmp_path, augment=AUGMENT)
    assert student_views(fresh) is None and cached_views(fresh, 3) == 3  # the cache holds one view per epoch
    capped = _config(demo_root, tmp_path, augment=AUGMENT, views=2)
    assert student_views(capped) == 2 and cached_views(capped, 3) == 2


def test_each_stage_gets_its_views_and_a_capped_student_is_warned(demo_root, tmp_path, monkeypatch, caplog):
    seen = {}
    real = fit.train_stage

    def recording(name, *args, views=None, **kwargs):
        seen[name] = views
        return real(name, *args, views=views, **kwargs)

    monkeypatch.setattr(fit, "train_stage", recording)
    config = _config(demo_root, tmp_path / "a", augment=AUGMENT)
    run_experiment(config)
    assert seen == {"teacher": None, "student": None, "baseline": None}
    store = next((tmp_path / "a" / "cache" / "teacher").glob("*/store.json")).parent
    import json

    assert json.loads((store / "store.json").read_text())["views"] == 3  # one per student epoch

    with caplog.at_level(logging.WARNING):
        run_experiment(_config(demo_root, tmp_path / "b", augment=AUGMENT, views=2))
    assert seen == {"teacher": None, "student": 2, "baseline": None}  # the baseline reads no cache: fresh
    assert "the KD student sees 2 augmented view(s) per sample over 3 epochs" in caplog.text


def test_the_shuffle_order_does_not_depend_on_num_workers(demo_root, tmp_path):
    data = load_data(_config(demo_root, tmp_path, augment=AUGMENT))
    orders = {}
    for workers in (0, 2):
        loader = data.loader("train", 16, shuffle=True, seed=3, num_workers=workers, views=None,
                             modalities={"image"})
        orders[workers] = [torch.cat([b["index"] for b in loader]).tolist() for _ in range(3)]
    assert orders[0] == orders[2]
    assert orders[0][0] != orders[0][1]  # and it reshuffles every epoch


def test_the_default_accelerator_uses_a_gpu_when_one_is_visible(demo_root, tmp_path, monkeypatch):
    config = _config(demo_root, tmp_path)
    assert config.training.accelerator == "auto"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert on_cpu(config) and teacher_device(config).type == "cpu"  # deterministic CPU training
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert not on_cpu(config) and teacher_device(config).type == "cuda"  # extract and caches run there too
    cpu = config.model_copy(update={"training": config.training.model_copy(update={"accelerator": "cpu"})})
    assert on_cpu(cpu) and teacher_device(cpu).type == "cpu"
