"""What `compress` decides besides the models themselves (issue 17): the default int8 path is
chosen on dev, never on test; int8 calibration reads a seeded random sample of train, not the
file's first rows; a pruned fine-tune starts from the pruned weights, not the student's own
resume_from / load_from."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from conftest import tiny_config
from mmdistill.compress import finetune as finetune_module
from mmdistill.compress.pipeline import Compressor
from mmdistill.compress.tensor_model import plain_batches
from mmdistill.config.schema import CompressSpec, ExperimentConfig
from mmdistill.data.dataset import load_data


def test_the_default_int8_path_is_chosen_on_dev_not_test():
    """The faster QDQ model loses 0.1 on dev but wins on test; the FX model holds dev: FX."""
    entries = {"fp32": {"dev_score": 0.80, "score": 0.80},
               "onnx_int8_qdq": {"dev_score": 0.70, "score": 0.90},
               "int8_static_fx": {"dev_score": 0.80, "score": 0.60}}
    timings = {"onnx_int8_qdq": {"latency_ms_batch1": 1.0}, "int8_static_fx": {"latency_ms_batch1": 5.0}}
    assert Compressor.default_int8(SimpleNamespace(entries=entries), timings) == "int8_static_fx"


def test_calibration_is_a_seeded_random_sample_of_train(demo_root, tmp_path):
    config = ExperimentConfig.model_validate(tiny_config(demo_root, tmp_path))
    data = load_data(config)
    fake = SimpleNamespace(_calibration=None, names=["image"], data=data, config=config,
                           spec=SimpleNamespace(calibration_samples=16))
    drawn = torch.cat([images for (images,) in Compressor.calibration(fake)])
    first = torch.cat([b["inputs"]["image"] for b in plain_batches(data, "train", 32, 16)])
    seeded = torch.cat([b["inputs"]["image"] for b in plain_batches(data, "train", 32, 16, sample_seed=config.seed)])
    assert drawn.shape == first.shape == (16, 3, 16, 16)
    assert not torch.equal(drawn, first)  # not the file's first 16 rows
    assert torch.equal(drawn, seeded)     # the run's seed draws them: the same sample every time


def test_a_pruned_finetune_does_not_inherit_the_students_resume_from(demo_root, tmp_path, monkeypatch):
    raw = tiny_config(demo_root, tmp_path)
    raw["training"]["student"].update(resume_from=str(tmp_path / "student_last.ckpt"),
                                      load_from=str(tmp_path / "student.safetensors"))
    config = ExperimentConfig.model_validate(raw)
    stages = []
    monkeypatch.setattr(finetune_module, "student_objective", lambda *a: SimpleNamespace(set_dataset_size=lambda n: None))
    monkeypatch.setattr(finetune_module, "train_stage", lambda name, cfg, stage, *a, **k: stages.append(stage))
    data = SimpleNamespace(tasks=[], datasets={"train": [0] * 8})
    finetune_module.finetune("pruned_structured", config, CompressSpec(finetune_epochs=2), torch.nn.Linear(1, 1),
                             None, data, None, tmp_path)
    assert config.training.student.resume_from is not None  # the run's own config is left as it was
    (stage,) = stages
    assert stage.resume_from is None and stage.load_from is None and stage.epochs == 2
