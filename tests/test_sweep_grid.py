"""Sweep config: grid expansion, variant names, the sweep block's schema, and bad grid values
exiting 2 before anything runs."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from conftest import tiny_config, write_config
from mmdistill.cli import main
from mmdistill.config.schema import SweepExecutorSpec, SweepSpec
from mmdistill.errors import UserError
from mmdistill.sweep.grid import Variant, apply_variant, expand_grid, set_dotted, short_keys, slug
from mmdistill.config.hashing import config_hash, teacher_key


def test_grid_expands_to_every_combination_with_readable_names():
    variants = expand_grid({"objective.preset": ["kl_bce", "kl_l2_bce"], "student.fusion.type": ["concat_mlp", "gated"],
                            "training.student.lr": [0.001]})
    assert [v.name for v in variants] == ["preset-kl_bce__type-concat_mlp", "preset-kl_bce__type-gated",
                                          "preset-kl_l2_bce__type-concat_mlp", "preset-kl_l2_bce__type-gated"]
    # every grid key is applied, also the one that does not vary (and so is not in the name)
    assert variants[1].overrides == {"objective.preset": "kl_bce", "student.fusion.type": "gated",
                                     "training.student.lr": 0.001}
    assert expand_grid({"objective.preset": ["kd"]})[0].name == "preset-kd"
    assert expand_grid({}) == [Variant("default", {})]


def test_names_are_filesystem_safe_and_unique():
    assert short_keys(["student.fusion.type", "teacher.fusion.type", "objective.preset"]) == {
        "student.fusion.type": "student.fusion.type", "teacher.fusion.type": "teacher.fusion.type",
        "objective.preset": "preset"}
    assert slug("a b/c:d") == "a_b_c_d"
    assert slug("../x") == "x"
    names = [v.name for v in expand_grid({"student.encoders.image.widths": [[8, 16], [4, 8]],
                                          "student.fusion": [{"type": "gated"}, {"type": "concat_mlp"}]})]
    assert names[0] == "widths-8_16__fusion-type_gated"
    for name in names:
        assert all(c.isalnum() or c in "._+-" for c in name), name
    long = expand_grid({"data.root": ["/a/" + "x" * 80, "/b/" + "x" * 80]})
    assert len({v.name for v in long}) == 2 and all(len(v.name) < 60 for v in long)
    clash = expand_grid({"data.root": ["a/b", "a_b"]})  # slug alike: told apart by a content hash
    assert len({v.name for v in clash}) == 2


def test_set_dotted_creates_sections_and_indexes_lists():
    tree = {"a": {"b": 1}, "terms": [{"w": 1}, {"w": 2}]}
    set_dotted(tree, "a.c.d", [1, 2])
    set_dotted(tree, "terms.1.w", 5)
    assert tree == {"a": {"b": 1, "c": {"d": [1, 2]}}, "terms": [{"w": 1}, {"w": 5}]}
    with pytest.raises(UserError, match="not a section"):
        set_dotted(tree, "a.b.x", 1)
    with pytest.raises(UserError, match="not an index"):
        set_dotted(tree, "terms.7.w", 1)
    base = {"x": {"y": 1}}
    assert apply_variant(base, Variant("v", {"x.y": 2})) == {"x": {"y": 2}} and base == {"x": {"y": 1}}


def test_sweep_block_schema():
    spec = SweepSpec.model_validate({"grid": {"objective": {"preset": ["kd", "kl_bce"]}}})
    assert spec.grid == {"objective.preset": ["kd", "kl_bce"]}  # nested spelling (what --set writes) = dotted
    assert spec.seeds == [42, 123, 456] and spec.tune.metric == "student.dev.score" and spec.tune.mode == "max"
    assert spec.executor.type == "local" and spec.executor.workers == 1
    assert SweepSpec.model_validate({"grid": {}}).grid == {}  # --set 'sweep.grid={}': seeds only
    for bad in ({"seeds": [1, 1]}, {"grid": {"seed": [1, 2]}}, {"grid": {"x": []}}, {"tune": {"mode": "best"}},
                {"grid": {"objective.preset": "kd"}}):
        with pytest.raises(ValidationError):
            SweepSpec.model_validate(bad)


@pytest.mark.parametrize("text, minutes", [(90, 90), ("90", 90), ("30:00", 30), ("02:00:00", 120), ("1-12", 2160),
                                           ("1-00:30", 1470), ("00:00:30", 1)])
def test_slurm_time_accepts_slurm_formats(text, minutes):
    assert SweepExecutorSpec(time=text).time == minutes


def test_slurm_memory_needs_a_unit():
    assert SweepExecutorSpec(mem="32G").mem == "32G"
    with pytest.raises(ValidationError, match="unit"):
        SweepExecutorSpec(mem="32")


def test_teacher_key_ignores_student_side_and_config_hash_ignores_paths(demo_root, tmp_path):
    from mmdistill.config.schema import ExperimentConfig

    raw = tiny_config(demo_root, tmp_path / "runs")
    a = ExperimentConfig.model_validate(raw)
    b = ExperimentConfig.model_validate(raw | {"objective": {"preset": "kl_bce"}, "output_dir": "elsewhere",
                                               "experiment_name": "other", "logging": {"progress_bar": True}})
    assert teacher_key(a) == teacher_key(b)
    assert config_hash(a) != config_hash(b)
    c = ExperimentConfig.model_validate(raw | {"output_dir": "elsewhere", "experiment_name": "other"})
    assert config_hash(a) == config_hash(c)
    raw_t = tiny_config(demo_root, tmp_path / "runs")
    raw_t["training"]["teacher"]["lr"] = 1e-2
    assert teacher_key(ExperimentConfig.model_validate(raw_t)) != teacher_key(a)
    assert teacher_key(a) == teacher_key(ExperimentConfig.model_validate(raw | {"seed": 1}))
    assert teacher_key(a, with_seed=True) != teacher_key(ExperimentConfig.model_validate(raw | {"seed": 1}), with_seed=True)


def _sweep_file(demo_root, tmp_path, sweep):
    raw = tiny_config(demo_root, tmp_path / "runs")
    raw["sweep"] = sweep
    return write_config(tmp_path / "sweep.yaml", raw)


@pytest.mark.parametrize("grid, expected", [
    ({"objective.preset": ["kd", "nope"]}, "sweep.grid objective.preset=nope (variant preset-nope): objective.preset: unknown preset 'nope'"),
    ({"training.student.lr": [1e-3, -1]}, "sweep.grid training.student.lr=-1"),
    ({"training.student.lr_rate": [1e-3]}, "training.student.lr_rate: unknown key"),
    ({"student.encoders.image.type": ["tiny_cnn", "hf_text"]}, "sweep.grid student.encoders.image.type=hf_text"),
    ({"teacher.encoders.image": [{"type": "timm", "name": "resnet999"}]}, "'resnet999' is not a timm model name"),
])
def test_a_bad_grid_value_exits_2_naming_key_and_value_before_anything_runs(capsys, demo_root, tmp_path, grid, expected):
    path = _sweep_file(demo_root, tmp_path, {"grid": grid, "seeds": [1]})
    assert main(["sweep", str(path)]) == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()


def test_unknown_executor_exits_2(capsys, demo_root, tmp_path):
    path = _sweep_file(demo_root, tmp_path, {"executor": {"type": "kubernetes"}})
    assert main(["sweep", str(path)]) == 2
    assert "sweep.executor.type: unknown sweep executor 'kubernetes'; choose one of local, slurm" in capsys.readouterr().err


def test_dry_run_lists_the_plan_and_writes_nothing(capsys, demo_root, tmp_path):
    path = _sweep_file(demo_root, tmp_path, {"grid": {"objective.preset": ["kd", "kl_bce"]}, "seeds": [1, 2]})
    assert main(["sweep", str(path), "--dry-run", "--set", "sweep.grid.student.projection_dim=[8, 16]"]) == 0
    out = capsys.readouterr().out
    assert "4 variant(s) x 2 seed(s) = 8 runs" in out
    assert "2 shared teacher(s), 2 to train" in out  # projection_dim and preset are student-side: one teacher per seed
    assert "variant preset-kd__projection_dim-16: objective.preset=kd, student.projection_dim=16" in out
    assert out.count("would run") == 10
    assert not (tmp_path / "runs").exists()
