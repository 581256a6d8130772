"""Pruning and quantization pieces on untrained students built from the tiny config: what can
be shrunk and what cannot, exact unstructured sparsity, and int8 files of a full-width student."""

from __future__ import annotations

import copy

import lightning as L
import pytest
import torch

from conftest import tiny_config
from mmdistill.compress import onnx_export, prune_channels, prune_unstructured, quantize
from mmdistill.compress.measure import count_params, nondeterministic
from mmdistill.compress.tensor_model import plain_batches, tensor_student, tensors_of
from mmdistill.config.schema import ExperimentConfig
from mmdistill.data.dataset import load_data
from mmdistill.models.build import build_model


def student(demo_root, tmp_path, encoder: dict):
    raw = tiny_config(demo_root, tmp_path)
    raw["student"]["encoders"]["image"] = encoder
    config = ExperimentConfig.model_validate(raw)
    data = load_data(config)
    L.seed_everything(0, verbose=False)
    return config, data, build_model(config, "student", data).eval()


def test_residual_backbone_cannot_be_shrunk_and_says_why(demo_root, tmp_path):
    _, _, model = student(demo_root, tmp_path, {"type": "timm", "name": "resnet10t"})
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(prune_channels.CannotShrink, match="not a plain chain"):
        prune_channels.prune_channels(model, 0.5)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # left whole


@pytest.mark.parametrize("amount", [0.3, 0.75])
def test_unstructured_sparsity_is_exact_and_spares_the_heads(demo_root, tmp_path, amount):
    _, _, model = student(demo_root, tmp_path, {"type": "tiny_cnn", "widths": [8, 16]})
    heads = copy.deepcopy(model.heads.state_dict())
    params = prune_unstructured.prune_unstructured(model, amount)
    total = sum(m.weight.numel() for m, _ in params)
    assert abs(prune_unstructured.sparsity(params) - amount) <= 1 / total
    assert all(torch.equal(heads[k], v) for k, v in model.heads.state_dict().items())
    assert count_params(model)[1] < count_params(model)[0]


def test_channel_pruning_a_plain_conv_stack_shrinks_every_layer(demo_root, tmp_path):
    _, data, model = student(demo_root, tmp_path, {"type": "tiny_cnn", "widths": [16, 32, 64]})
    plan, notes = prune_channels.prune_channels(model, 0.75)
    assert prune_channels.conv_widths(model) == {"image": [4, 4, 8, 8, 16, 16]}
    assert model.projections["image"][0].in_features == 16
    batch = next(plain_batches(data, "test", 3))
    assert model(batch["inputs"]).logits["finding"].shape == (3, 4)


def test_int8_files_of_a_full_width_student_are_about_4x_smaller(demo_root, tmp_path):
    config, data, model = student(demo_root, tmp_path, {"type": "tiny_cnn"})  # 32..256 channels, ~1.2M params
    wrap = tensor_student(model)
    batches = [tensors_of(b["inputs"], ["image"]) for b in plain_batches(data, "train", 16, 32)]
    fp32_onnx = tmp_path / "fp32.onnx"
    onnx_export.export(wrap, tuple(t[:1] for t in batches[0]), fp32_onnx)
    qdq = tmp_path / "int8.onnx"
    onnx_export.quantize_int8(fp32_onnx, qdq, onnx_export.numpy_batches(batches, ["image"]), "qdq")
    assert qdq.stat().st_size < 0.3 * fp32_onnx.stat().st_size
    fx = quantize.static_fx(wrap, batches)
    quantize.save(fx, tmp_path / "fx.pt")
    assert (tmp_path / "fx.pt").stat().st_size < 0.3 * fp32_onnx.stat().st_size
    reloaded = quantize.load("static_fx", wrap, tmp_path / "fx.pt", tuple(t[:1] for t in batches[0]))
    with torch.no_grad(), nondeterministic():  # a deterministic Lightning run earlier in the session may leave it on
        torch.testing.assert_close(reloaded(*batches[0]), fx(*batches[0]))
