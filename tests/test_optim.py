"""Per-module optimizer settings, backbone warm-up, validation interval (seed 004)."""

from __future__ import annotations

import csv
import math

import pytest
import torch

from conftest import tiny_config, write_config
from mmdistill.preflight import load_config
from mmdistill.config.schema import ImageModality, ModelSpec, StageTraining
from mmdistill.losses.objective import build_objective
from mmdistill.models.net import MultiModalNet, TaskInfo
from mmdistill.train.optim import build_optimizer
from mmdistill.run.experiment import run_experiment
from mmdistill.train.warmup import BackboneWarmup

TASKS = [TaskInfo("y", "multiclass", ("a", "b"))]
MODS = {"image": ImageModality(kind="image", column="i", size=8)}


def _net(encoder=None):
    spec = ModelSpec.model_validate({"encoders": {"image": encoder or {"type": "tiny_cnn", "widths": [4, 8, 16]}},
                                     "projection_dim": 8})
    return MultiModalNet(spec, MODS, TASKS)


def test_backbone_group_gets_its_own_lr_decay_and_eta_min():
    net = _net()
    cfg = StageTraining(epochs=10, lr=1e-2, eta_min=1e-3, weight_decay=0.1,
                        backbone={"lr": 1e-4, "weight_decay": 0.0, "eta_min": 0.0})
    out = build_optimizer(net, build_objective("task_only", None, TASKS, net, None), cfg)
    opt, sched = out["optimizer"], out["lr_scheduler"]["scheduler"]
    head, backbone = opt.param_groups
    assert {id(p) for p in backbone["params"]} == {id(p) for p in net.encoders.parameters()}
    assert (head["lr"], head["weight_decay"], backbone["lr"], backbone["weight_decay"]) == pytest.approx((1e-2, 0.1, 1e-4, 0.0))
    for _ in range(5):
        opt.step()
        sched.step()
    half = lambda lo, hi: lo + (hi - lo) * (1 + math.cos(math.pi * 5 / 10)) / 2
    assert head["lr"] == pytest.approx(half(1e-3, 1e-2)) and backbone["lr"] == pytest.approx(half(0.0, 1e-4))


@pytest.mark.parametrize("encoder, groups", [({"type": "tiny_cnn", "widths": [4, 8, 16]}, 3),
                                             ({"type": "timm", "name": "test_resnet"}, 5)])
def test_layer_groups_cover_every_encoder_parameter(encoder, groups):
    enc = _net(encoder).encoders["image"]
    found = enc.layer_groups()
    assert len(found) == groups
    assert sorted(id(p) for g in found for p in g) == sorted(id(p) for p in enc.parameters())


def test_warmup_freezes_then_unfreezes_the_last_layers():
    net = _net()

    class Stub:
        model = net

    class Trainer:
        current_epoch = 0

    warmup = BackboneWarmup(freeze_epochs=2, unfreeze_layers=1)
    warmup.on_train_epoch_start(Trainer, Stub)
    assert not any(p.requires_grad for p in net.encoders.parameters())
    assert all(p.requires_grad for p in net.heads.parameters())
    Trainer.current_epoch = 2
    warmup.on_train_epoch_start(Trainer, Stub)
    groups = net.encoders["image"].layer_groups()
    assert all(p.requires_grad for p in groups[-1]) and not any(p.requires_grad for p in groups[0])


def test_warmup_under_ddp_keeps_requires_grad_and_drops_frozen_gradients():
    """DDP registers the parameters that need gradients when it wraps the model: flipping
    `requires_grad` later would leave an unfrozen layer's gradient unaveraged across ranks.
    Under DDP every parameter keeps it, and a frozen one's gradient is dropped before the step."""
    net = _net()

    class Stub:
        model = net

    class Trainer:
        current_epoch, world_size = 0, 2

    warmup = BackboneWarmup(freeze_epochs=2, unfreeze_layers=1)
    groups = net.encoders["image"].layer_groups()
    for epoch, frozen in ((0, groups), (2, groups[:-1])):
        Trainer.current_epoch = epoch
        warmup.on_train_epoch_start(Trainer, Stub)
        assert all(p.requires_grad for p in net.parameters())
        for p in net.parameters():
            p.grad = torch.ones_like(p)
        warmup.on_before_optimizer_step(Trainer, Stub, None)
        dropped = {id(p) for g in frozen for p in g}
        assert all((p.grad is None) == (id(p) in dropped) for p in net.parameters()), epoch


def test_warmup_and_validation_interval_in_a_run(demo_root, tmp_path):
    raw = tiny_config(demo_root, tmp_path / "runs")
    raw["training"]["teacher"].update(epochs=4, freeze_backbone_epochs=2, validation_interval=2, patience=None)
    raw["training"]["baseline"] = False
    config = load_config(write_config(tmp_path / "c.yaml", raw))
    torch.manual_seed(0)
    run_experiment(config)
    rows = [r for r in csv.DictReader((tmp_path / "runs" / "tiny" / "metrics.csv").open()) if r["stage"] == "teacher"]
    assert [r["epoch"] for r in rows] == ["2", "4"]  # validated every second epoch


def test_periodic_checkpoints_keep_the_last_and_a_stage_resumes_from_one(demo_root, tmp_path):
    raw = tiny_config(demo_root, tmp_path / "a")
    raw["training"]["teacher"].update(epochs=3, save_every=1, keep_last=2, patience=None)
    raw["training"]["student"]["epochs"] = 1
    raw["training"]["baseline"] = False
    run_experiment(load_config(write_config(tmp_path / "a.yaml", raw)))
    kept = sorted(p.name for p in (tmp_path / "a" / "tiny" / "checkpoints" / "teacher_epochs").iterdir())
    assert kept == ["epoch002.ckpt", "epoch003.ckpt"]

    raw["output_dir"] = str(tmp_path / "b")
    raw["training"]["teacher"].update(epochs=4, save_every=None,
                                      resume_from=str(tmp_path / "a" / "tiny" / "checkpoints" / "teacher_epochs" / "epoch003.ckpt"))
    results = run_experiment(load_config(write_config(tmp_path / "b.yaml", raw)))
    rows = [r for r in csv.DictReader((tmp_path / "b" / "tiny" / "metrics.csv").open()) if r["stage"] == "teacher"]
    earlier = [r for r in csv.DictReader((tmp_path / "a" / "tiny" / "metrics.csv").open()) if r["stage"] == "teacher"]
    assert [r["epoch"] for r in rows] == ["1", "2", "3", "4"]  # epochs 1-3 trained in a, 4 here: all kept
    assert [r["dev_score"] for r in rows[:3]] == [r["dev_score"] for r in earlier]
    scores = [float(r["dev_score"]) for r in rows]  # the best over all four epochs, not the first after resuming
    assert results["teacher"]["best_epoch"] == scores.index(max(scores)) + 1


def test_missing_resume_checkpoint_is_a_config_error(config_file):
    from mmdistill.errors import UserError

    with pytest.raises(UserError, match=r"training\.teacher\.resume_from: checkpoint not found"):
        load_config(config_file, ["training.teacher.resume_from=nope.ckpt"])


@pytest.mark.parametrize("kind", ["safetensors", "ckpt"])
def test_load_from_starts_a_stage_from_earlier_weights_with_a_fresh_schedule(demo_root, tmp_path, kind):
    """Seed 004's load_from: the stage starts from those weights and trains all its epochs
    (unlike resume_from, which continues where a stopped stage was)."""
    raw = tiny_config(demo_root, tmp_path / "a")
    raw["training"]["teacher"].update(epochs=2, save_every=1, keep_last=1, patience=None)
    raw["training"]["student"]["epochs"] = 1
    raw["training"]["baseline"] = False
    raw["logging"]["plots"] = False
    first = run_experiment(load_config(write_config(tmp_path / "a.yaml", raw)))
    checkpoints = tmp_path / "a" / "tiny" / "checkpoints"
    start = checkpoints / ("teacher_best.safetensors" if kind == "safetensors" else "teacher_epochs/epoch002.ckpt")

    raw["output_dir"] = str(tmp_path / "b")
    raw["training"]["teacher"].update(epochs=2, save_every=None, load_from=str(start), lr=1e-12)
    second = run_experiment(load_config(write_config(tmp_path / "b.yaml", raw)))
    rows = [r for r in csv.DictReader((tmp_path / "b" / "tiny" / "metrics.csv").open()) if r["stage"] == "teacher"]
    assert [r["epoch"] for r in rows] == ["1", "2"]  # all of its epochs, from the start
    if kind == "safetensors":  # lr ~0: the loaded weights are the first run's best, scored the same
        assert second["teacher"]["test"]["score"] == pytest.approx(first["teacher"]["test"]["score"])
    else:  # the epoch-2 weights (the last epoch), not a fresh init: the first epoch already scores as they do
        assert float(rows[0]["dev_score"]) == pytest.approx(
            next(float(r["dev_score"]) for r in csv.DictReader((tmp_path / "a" / "tiny" / "metrics.csv").open())
                 if r["stage"] == "teacher" and r["epoch"] == "2"), abs=1e-6)


def test_load_from_a_checkpoint_of_another_model_names_it(config_file, tmp_path):
    from mmdistill.errors import UserError
    from mmdistill.models.checkpoints import load_start_weights, save_weights

    other = _net({"type": "tiny_cnn", "widths": [4]})
    save_weights(other, tmp_path / "other.safetensors")
    with pytest.raises(UserError, match="training.teacher.load_from: .*other.safetensors"):
        load_start_weights(_net(), tmp_path / "other.safetensors", "training.teacher.load_from")
    with pytest.raises(UserError, match=r"training\.student\.load_from: checkpoint not found"):
        load_config(config_file, ["training.student.load_from=nope.safetensors"])
