"""Modality masking, per-modality auxiliary heads and L2-normalised projections (seed 004)."""

from __future__ import annotations

import csv

import pytest
import torch

from conftest import tiny_config, write_config
from mmdistill.preflight import load_config
from mmdistill.config.schema import EmbeddingModality, ImageModality, ModelSpec
from mmdistill.errors import UserError
from mmdistill.losses.terms import AuxTaskLoss, AuxTaskParams, LossBatch
from mmdistill.models.fusion import FUSIONS
from mmdistill.models.net import MultiModalNet, TaskInfo
from mmdistill.run.experiment import run_experiment

MODS = {"image": ImageModality(kind="image", column="i", size=8), "text": EmbeddingModality(kind="embedding", column="t")}
TASKS = [TaskInfo("y", "multiclass", ("a", "b", "c"))]


def _net(fusion="weighted_sum", **extra):
    spec = ModelSpec.model_validate({"encoders": {"image": {"type": "tiny_cnn", "widths": [4]}, "text": {"type": "mlp"}},
                                     "projection_dim": 8, "fusion": {"type": fusion}, **extra})
    return MultiModalNet(spec, MODS, TASKS, {"text": 5})


def _inputs(n=64):
    return {"image": torch.randn(n, 3, 8, 8), "text": torch.randn(n, 5)}


def test_random_masking_never_drops_every_modality_and_only_trains():
    torch.manual_seed(0)
    net = _net(masking={"random": {"image": 0.7, "text": 0.7}})
    net.train()
    present = net(_inputs()).present
    assert present.any(dim=1).all()  # at least one modality kept per sample
    assert (~present).any()  # and masking did happen
    net.eval()
    assert net(_inputs()).present.all()


@pytest.mark.parametrize("fusion", FUSIONS.names())
def test_complete_masking_makes_the_output_independent_of_that_modality(fusion):
    torch.manual_seed(0)
    net = _net(fusion, masking={"complete": "text"}).eval()
    x = _inputs(4)
    y = {"image": x["image"], "text": torch.randn(4, 5) * 100}
    assert torch.allclose(net(x).logits["y"], net(y).logits["y"], atol=1e-5)


def test_normalized_projections_have_unit_norm():
    out = _net(normalize_projections=True)(_inputs(3))
    for p in out.projections.values():
        assert torch.allclose(p.norm(dim=-1), torch.ones(3), atol=1e-5)


def test_aux_loss_ignores_masked_samples():
    torch.manual_seed(1)
    net = _net(aux_heads=True, masking={"random": {"image": 0.5}})
    net.train()
    out = net(_inputs(16))
    y = torch.randint(0, 3, (16,))
    loss = AuxTaskLoss(AuxTaskParams(), TASKS, net, None)(out, None, LossBatch({"y": y}))
    keep = out.present[:, 0]
    ce = torch.nn.functional.cross_entropy
    expected = (ce(out.aux_logits["image"]["y"][keep], y[keep]) + ce(out.aux_logits["text"]["y"], y)) / 2
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_aux_task_needs_aux_heads_and_masking_needs_known_modalities(demo_root, tmp_path):
    raw = tiny_config(demo_root, tmp_path / "runs")
    raw["objective"]["supervised"] = [{"term": "task"}, {"term": "aux_task", "weight": 0.3}]
    with pytest.raises(UserError, match="set teacher.aux_heads: true"):
        load_config(write_config(tmp_path / "a.yaml", raw))
    raw["teacher"]["masking"] = {"random": {"report": 0.2}}
    raw["teacher"]["aux_heads"] = raw["student"]["aux_heads"] = True
    with pytest.raises(UserError, match="teacher.masking: 'report' is not a modality the teacher reads"):
        load_config(write_config(tmp_path / "b.yaml", raw))


def test_masked_teacher_with_aux_loss_trains_end_to_end(demo_root, tmp_path):
    raw = tiny_config(demo_root, tmp_path / "runs")
    raw["data"]["modalities"]["copy"] = {"kind": "image", "column": "image", "channels": 3, "size": 16}
    raw["teacher"]["encoders"]["copy"] = {"type": "tiny_cnn", "widths": [4]}
    raw["teacher"].update(masking={"random": {"image": 0.3, "copy": 0.3}}, aux_heads=True, normalize_projections=True,
                          fusion={"type": "weighted_sum"})
    raw["objective"]["supervised"] = [{"term": "task"}, {"term": "aux_task", "weight": 0.3}]
    raw["training"]["baseline"] = False
    run_experiment(load_config(write_config(tmp_path / "c.yaml", raw)))
    rows = [r for r in csv.DictReader((tmp_path / "runs" / "tiny" / "metrics.csv").open()) if r["stage"] == "teacher"]
    assert float(rows[0]["train_aux_task"]) > 0


@pytest.mark.parametrize("fusion", FUSIONS.names())
def test_a_sample_without_the_modality_is_masked_not_read_as_zeros(fusion):
    """Seed 004's cases without text: the dataset flags them (inputs["_absent"]) and the model
    masks that modality for them, whatever the placeholder vector holds, even without any
    masking configured; samples that have it are unaffected."""
    torch.manual_seed(0)
    net = _net(fusion).eval()
    inputs = _inputs(6)
    absent = torch.tensor([True, False, True, False, False, False])
    out = net({**inputs, "_absent": {"text": absent}})
    assert out.present[:, 1].tolist() == (~absent).tolist() and out.present[:, 0].all()
    noise = inputs["text"].clone()
    noise[absent] = torch.randn(int(absent.sum()), 5) * 100
    again = net({**inputs, "text": noise, "_absent": {"text": absent}})
    for task in out.logits:
        torch.testing.assert_close(again.logits[task], out.logits[task])
    plain = net(inputs)  # no flags: nothing masked, as before
    assert plain.present is None
    torch.testing.assert_close(plain.logits["y"][~absent], out.logits["y"][~absent])


def test_a_sample_with_no_modality_at_all_keeps_one():
    net = _net().eval()
    both = torch.tensor([True, False])
    out = net({**_inputs(2), "_absent": {"text": both, "image": both}})
    assert out.present.any(dim=1).all()
