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
