"""Presets as seeds 000 and 002 used them: overrides of their terms, and seed 000's feature
losses between each modality's teacher embedding and student projection."""

from __future__ import annotations

import pytest
import torch

from conftest import tiny_config, write_config
from mmdistill.config.schema import ExperimentConfig, ImageModality, ModelSpec, TextModality
from mmdistill.errors import UserError
from mmdistill.losses.objective import build_objective
from mmdistill.losses.presets import resolve_terms
from mmdistill.models.net import MultiModalNet, TaskInfo
from mmdistill.preflight import load_config

MC = TaskInfo("m", "multiclass", ("a", "b", "c"))


def test_overrides_change_a_presets_weights_and_params():
    terms = resolve_terms("kl_bce", None, {"kd_logits": _override(params={"temperature": 2.0}),
                                           "task": _override(weight=0.5)})
    kd, task = terms
    assert (kd.term, kd.weight, kd.params) == ("kd_logits", 0.7, {"temperature": 2.0})
    assert (task.term, task.weight) == ("task", 0.5)


def test_an_override_of_a_term_the_preset_lacks_names_it():
    with pytest.raises(UserError, match=r"objective.overrides.feat_l2: preset 'kd' has no term 'feat_l2' "
                                        r"\(its terms: task, kd_logits\)"):
        resolve_terms("kd", None, {"feat_l2": _override(weight=1.0)})


def test_the_temperature_override_reaches_the_kd_term(demo_root, tmp_path):
    raw = tiny_config(demo_root, tmp_path)
    raw["objective"] = {"preset": "vanilla"}
    path = write_config(tmp_path / "c.yaml", raw)
    config = load_config(path, ["objective.overrides.kd_logits.params.temperature=2"])
    assert config.objective.overrides["kd_logits"].params == {"temperature": 2}
    student, teacher = _nets(["image"]), _nets(["image"])
    objective = build_objective(config.objective.preset, None, [MC], student, teacher,
                                overrides=config.objective.overrides)
    assert objective.terms[objective.names.index("kd_logits")].T == 2
    with pytest.raises(UserError, match="kd_logits.params.temprature: unknown parameter"):
        load_config(path, ["objective.overrides.kd_logits.params.temprature=2"])
    raw["objective"] = {"terms": [{"term": "task"}], "overrides": {"task": {"weight": 2}}}
    with pytest.raises(UserError, match="`overrides` change a preset's terms"):
        load_config(write_config(tmp_path / "d.yaml", raw))


@pytest.mark.parametrize("preset,term", [("combined", "feat_l2"), ("crd", "crd"), ("rkd", "rkd"), ("mmd", "mmd")])
def test_seed_000_presets_compare_each_modality_the_student_has(preset, term):
    """Teacher and student both read image and text: one copy of the feature term per modality,
    teacher raw embedding against student projection, the preset's weight shared."""
    terms = resolve_terms(preset, None, None, ["image", "text"], ["image", "text", "ir"])
    copies = [t for t in terms if t.term == term]
    assert [(t.params["student"], t.params["teacher"]) for t in copies] == [
        ("projection:image", "embedding:image"), ("projection:text", "embedding:text")]
    preset_weight = {"combined": 0.25, "crd": 0.8, "rkd": 1.0, "mmd": 1.0}[preset]
    assert [t.weight for t in copies] == [preset_weight / 2] * 2
    assert [t.name for t in copies] == [f"{term}_image", f"{term}_text"]


def test_an_image_only_student_gets_its_one_shared_modality_and_no_shared_modality_means_fused():
    one = [t for t in resolve_terms("combined", None, None, ["image"], ["image", "text"]) if t.term == "feat_l2"]
    assert [(t.params["student"], t.params["teacher"], t.weight, t.name) for t in one] == [
        ("projection:image", "embedding:image", 0.25, None)]
    none = [t for t in resolve_terms("rkd", None, None, ["image"], ["image_teacher"]) if t.term == "rkd"]
    assert [(t.params["student"], t.params["teacher"]) for t in none] == [("fused", "fused")]


def test_a_per_modality_objective_trains_and_names_its_parts():
    torch.manual_seed(0)
    student, teacher = _nets(["image", "text"], dim=4), _nets(["image", "text"], dim=6)
    objective = build_objective("combined", None, [MC], student, teacher)
    assert objective.names == ["task", "kd_logits", "feat_l2_image", "feat_l2_text", "feat_cos_image", "feat_cos_text"]
    inputs = {"image": torch.randn(4, 3, 8, 8), "text": ["a b", "c", "d e f", "g"]}
    from mmdistill.losses.terms import LossBatch

    with torch.no_grad():
        t_out = teacher(inputs)
    total, parts = objective(student(inputs), t_out, LossBatch({"m": torch.tensor([0, 1, 2, 0])}))
    total.backward()
    assert torch.isfinite(total) and set(parts) == set(objective.names)
    assert student.encoders["text"].model.embeddings.word_embeddings.weight.grad is not None  # text features pulled


def _override(weight=None, params=None):
    from mmdistill.config.schema import TermOverride

    return TermOverride(weight=weight, params=params or {})


def _nets(modalities, dim=4):
    encoders = {"image": {"type": "tiny_cnn", "widths": [4]},
                "text": {"type": "hf_text", "model": "tiny-random-bert", "trainable": True, "max_length": 8}}
    spec = ModelSpec.model_validate({"encoders": {m: encoders[m] for m in modalities}, "projection_dim": dim})
    mods = {"image": ImageModality(kind="image", column="x", size=8), "text": TextModality(kind="text", column="t")}
    return MultiModalNet(spec, mods, [MC])
