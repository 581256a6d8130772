"""Every recipe runs end to end with --smoke on the data its demo-data kind writes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mmdistill.cli import main
from mmdistill.data.demo import DEMO_KINDS

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
SMALL = {
    "demo": {"sizes": {"train": 48, "dev": 24, "test": 24}},
    "medpix": {"sizes": {"train": 30, "dev": 12, "test": 12}},
    "wound": {"sizes": {"train": 36, "dev": 15, "test": 15}},
    "fire_smoke": {"n": 80},
    "derm": {"n": 90},
    "feature_kd": {"sizes": {"train": 40, "dev": 16, "test": 16}},
}
KIND = {"feature_kd": "embeddings"}  # the recipe a demo-data kind feeds, where the names differ
NO_BASELINE = {"feature_kd"}  # seed 003 has no supervised student to compare with


@pytest.mark.parametrize("recipe", sorted(SMALL))
def test_recipe_runs_with_smoke_on_its_demo_data(recipe, tmp_path, capsys):
    DEMO_KINDS.get(KIND.get(recipe, recipe))(tmp_path / "data", seed=1, **SMALL[recipe])
    code = main(["run", str(RECIPES / f"{recipe}.yaml"), "--smoke", "--set", f"data.root={tmp_path / 'data'}",
                 "--set", f"output_dir={tmp_path / 'runs'}", "--set", "logging.progress_bar=false"])
    assert code == 0, capsys.readouterr().err
    run_dir = tmp_path / "runs" / f"{recipe}_smoke"
    results = json.loads((run_dir / "results.json").read_text())
    assert {"teacher", "student"} <= set(results)
    assert ("baseline" in results) == (recipe not in NO_BASELINE)
    assert "KD student" in capsys.readouterr().out


def test_smoke_swaps_backbones_for_tiny_ones_of_the_same_family():
    from mmdistill.config.smoke import tiny_timm_name

    assert tiny_timm_name("vit_large_patch16_224") == "test_vit"
    assert tiny_timm_name("swin_tiny_patch4_window7_224") == "test_vit"
    assert tiny_timm_name("tf_efficientnet_b7") == "test_efficientnet"
    assert tiny_timm_name("resnet152") == "test_resnet"


def test_every_recipe_validates_as_written():
    from mmdistill.preflight import load_config

    for path in sorted(RECIPES.glob("*.yaml")):
        assert load_config(path).experiment_name


def _raw(name):
    import yaml

    return yaml.safe_load((RECIPES / f"{name}.yaml").read_text())


def test_every_recipe_states_its_training_schedule():
    for path in sorted(RECIPES.glob("*.yaml")):
        import yaml

        training = yaml.safe_load(path.read_text())["training"]
        stages = ["student"] if path.stem == "feature_kd" else ["teacher", "student"]  # 003's teacher is extracted
        for stage in stages:
            assert {"epochs", "optimizer", "lr", "scheduler", "patience"} <= set(training[stage]), (path.name, stage)


def test_recipes_train_as_their_seeds_did_and_name_every_departure():
    for name in ("medpix", "wound"):  # seeds 000/001: fixed epochs, constant learning rate
        for stage in ("teacher", "student"):
            assert _raw(name)["training"][stage]["scheduler"] == "none"
            assert _raw(name)["training"][stage]["patience"] is None
    fire = _raw("fire_smoke")  # seed 002: patience 10 / 5, its ablation over its five seeds, compressed
    assert [fire["training"][s]["patience"] for s in ("teacher", "student")] == [10, 5]
    assert fire["sweep"]["seeds"] == [42, 123, 456, 789, 1024]
    assert fire["sweep"]["grid"]["objective.preset"] == ["kl_bce", "kl_l2_bce", "kl_contrastive_l2_bce"]
    assert (fire["compress"]["sparsity"], fire["compress"]["finetune_epochs"]) == (0.4, 10)
    derm = _raw("derm")  # seed 004: cross-entropy *or* focal, best validation accuracy
    losses = [t["term"] for t in derm["objective"]["supervised"]]
    assert len({"task", "focal"} & set(losses)) == 1
    assert derm["training"]["teacher"]["monitor"] == derm["training"]["student"]["monitor"] == "dev_accuracy"
    feature = _raw("feature_kd")  # seed 003: squared L2 per sample, validation loss, its whole grid
    assert feature["objective"]["terms"][0]["params"]["reduction"] == "sum"
    assert feature["training"]["student"]["monitor"] == "dev_loss"
    assert [len(v) for v in feature["sweep"]["grid"].values()] == [3, 3, 2]


OURS = {"demo", "demo_sweep"}  # recipes with no seed behind them
# what a seed leaves unsaid that its recipe has to choose, so the recipe must say it chose it
UNSAID = {"fire_smoke": ("AdamW", "70/15/15"), "feature_kd": ("AdamW", "constant learning rate")}


def test_every_seed_recipe_names_its_departures_the_baseline_student_among_them():
    """No seed trains a baseline student: a recipe that does (the default) says so among its
    departures or additions, as it does what the seed left unsaid."""
    for path in sorted(RECIPES.glob("*.yaml")):
        if path.stem in OURS:
            continue
        header = path.read_text().split("\nexperiment_name")[0]
        named = header[max(header.find("Departure"), header.find("Addition")):].replace("\n# ", " ")
        assert "Departure" in header or "Addition" in header, path.name
        if _raw(path.stem)["training"].get("baseline", True):
            assert "baseline student" in named, path.name
        for choice in UNSAID.get(path.stem, ()):
            assert choice in named, (path.name, choice)
