"""Config loading: overrides are typed by the schema; every error names its key path."""

from __future__ import annotations

import json

import pytest

from conftest import tiny_config, write_config
from mmdistill.preflight import load_config
from mmdistill.errors import UserError


def _error(tmp_path, demo_root, mutate=None, overrides=()) -> str:
    data = tiny_config(demo_root, tmp_path / "runs")
    if mutate:
        mutate(data)
    path = write_config(tmp_path / "c.yaml", data)
    with pytest.raises(UserError) as exc:
        load_config(path, overrides)
    return str(exc.value)


def test_valid_config_loads_with_defaults(config_file):
    config = load_config(config_file)
    assert config.training.baseline is True
    assert config.student.fusion.type == "concat_mlp"
    assert config.run_dir.name == "tiny"


def test_unknown_key_is_named_with_its_path(tmp_path, demo_root):
    msg = _error(tmp_path, demo_root, lambda d: d["training"]["student"].update(lr_rate=0.1))
    assert "training.student.lr_rate: unknown key" in msg
    assert "c.yaml" in msg


def test_unknown_key_inside_a_tagged_union_has_no_tag_in_path(tmp_path, demo_root):
    msg = _error(tmp_path, demo_root, lambda d: d["student"]["encoders"]["image"].update(widht=3))
    assert "student.encoders.image.widht: unknown key" in msg


def test_wrong_type_names_key_and_value(tmp_path, demo_root):
    msg = _error(tmp_path, demo_root, lambda d: d["training"]["teacher"].update(epochs="many"))
    assert "training.teacher.epochs" in msg and "'many'" in msg


def test_missing_required_key(tmp_path, demo_root):
    msg = _error(tmp_path, demo_root, lambda d: d.pop("tasks"))
    assert "tasks: required key is missing" in msg


def test_overrides_are_typed_by_schema(config_file):
    config = load_config(config_file, ["training.student.lr=3e-4", "training.baseline=false",
                                       "experiment_name=2024", "student.encoders.image.widths=[2, 4]"])
    assert config.training.student.lr == pytest.approx(3e-4)
    assert config.training.baseline is False
    assert config.experiment_name == "2024"
    assert config.student.encoders["image"].widths == [2, 4]


def test_bad_override_is_reported_like_a_file_key(config_file):
    with pytest.raises(UserError, match=r"training\.student\.epochs"):
        load_config(config_file, ["training.student.epochs=zero"])
    with pytest.raises(UserError, match="expected KEY=VALUE"):
        load_config(config_file, ["training.student.epochs"])


def test_json_config_is_accepted(tmp_path, demo_root):
    path = tmp_path / "c.json"
    path.write_text(json.dumps(tiny_config(demo_root, tmp_path / "runs")))
    assert load_config(path).experiment_name == "tiny"


def test_encoder_must_read_a_declared_modality(tmp_path, demo_root):
    msg = _error(tmp_path, demo_root, lambda d: d["student"]["encoders"].update(ir={"type": "tiny_cnn"}))
    assert "student.encoders.ir" in msg and "no modality 'ir'" in msg


def test_encoder_type_must_fit_modality_kind(tmp_path, demo_root):
    msg = _error(tmp_path, demo_root, lambda d: d["student"]["encoders"].update(report={"type": "tiny_cnn"}))
    assert "student.encoders.report.type" in msg and "hf_text" in msg


def test_unknown_loss_term_and_parameter_are_named(tmp_path, demo_root):
    def bad_term(d):
        d["objective"] = {"terms": [{"term": "kd_logitz", "weight": 1.0}]}

    assert "objective.terms.0.term: unknown loss term 'kd_logitz'" in _error(tmp_path, demo_root, bad_term)

    def bad_param(d):
        d["objective"] = {"terms": [{"term": "kd_logits", "params": {"temp": 2}}]}

    msg = _error(tmp_path, demo_root, bad_param)
    assert "objective.terms.0.params.temp" in msg and "temperature" in msg


def test_feature_term_needs_the_modality_it_reads(tmp_path, demo_root):
    def bad(d):
        d["objective"] = {"terms": [{"term": "feat_l2", "params": {"student": "projection:report"}}]}

    msg = _error(tmp_path, demo_root, bad)
    assert "objective.terms.0.params.student" in msg and "no modality 'report'" in msg


def test_unknown_fusion_and_fusion_param(tmp_path, demo_root):
    msg = _error(tmp_path, demo_root, lambda d: d["teacher"].update(fusion={"type": "gatd"}))
    assert "teacher.fusion.type: unknown fusion type 'gatd'" in msg
    msg = _error(tmp_path, demo_root, lambda d: d["teacher"].update(fusion={"type": "cross_attention", "params": {"head": 2}}))
    assert "teacher.fusion.params.head" in msg and "heads" in msg


def test_unknown_preset(tmp_path, demo_root):
    msg = _error(tmp_path, demo_root, lambda d: d.update(objective={"preset": "nope"}))
    assert "objective.preset: unknown preset 'nope'" in msg


@pytest.mark.parametrize("key", ["plot_samples", "probe_samples"])
def test_sample_counts_refuse_a_negative_and_take_zero_or_null_for_all(tmp_path, demo_root, key):
    msg = _error(tmp_path, demo_root, lambda d: d["logging"].update({key: -1}))
    assert f"logging.{key}" in msg and "-1" in msg
    for value in (0, None, 5):
        data = tiny_config(demo_root, tmp_path / "runs")
        data["logging"][key] = value
        assert getattr(load_config(write_config(tmp_path / "ok.yaml", data)).logging, key) == value
    assert load_config(write_config(tmp_path / "d.yaml", tiny_config(demo_root, tmp_path / "runs"))).logging \
        .model_dump(include={"plot_samples", "probe_samples"}) == {"plot_samples": 2000, "probe_samples": 20000}
