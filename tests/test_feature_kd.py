"""Seed 003 as a recipe: the embeddings layout, `mmdistill extract`, feature-KD runs against
precomputed teacher embeddings, and the errors its bad input gets."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mmdistill.cli import main
from mmdistill.data.demo import write_embeddings_demo

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "feature_kd.yaml"
SIZES = {"train": 40, "dev": 16, "test": 16}


@pytest.fixture
def root(tmp_path) -> Path:
    write_embeddings_demo(tmp_path / "data", seed=1, sizes=SIZES)
    return tmp_path / "data"


def _args(root: Path, out: Path, *extra: str) -> list[str]:
    return [str(RECIPE), "--smoke", "--set", f"data.root={root}", "--set", f"output_dir={out}",
            "--set", "logging.progress_bar=false", *extra]


def test_extract_then_run_scores_teacher_and_student_by_probes(root, tmp_path, capsys):
    assert main(["extract", *_args(root, tmp_path / "runs")]) == 0
    train = np.load(root / "train_embeddings" / "embeddings.npy")
    dev = np.load(root / "val_embeddings" / "embeddings.npy")
    assert train.shape[:2] == (SIZES["train"], 2) and dev.shape[:2] == (SIZES["dev"], 1)
    assert not np.allclose(train[:, 0], train[:, 1])  # two views of each sample, not one copied
    meta = json.loads((root / "train_embeddings" / "meta.json").read_text())
    assert meta["seed"] == 42 and meta["augment"]["horizontal_flip_prob"] == 0.5

    assert main(["run", *_args(root, tmp_path / "runs")]) == 0, capsys.readouterr().err
    results = json.loads((tmp_path / "runs" / "feature_kd_smoke" / "results.json").read_text())
    for role in ("teacher", "student"):
        for split in ("dev", "test"):
            task = results["probe"][role][split]["tasks"]["finding"]
            assert 0 <= task["f1_macro"] <= 1 and 0 <= task["knn_f1_macro"] <= 1
    assert results["teacher"]["test"] == results["probe"]["teacher"]["test"]
    assert results["params"]["teacher"] is None  # the run never built the ViT teacher
    rows = (tmp_path / "runs" / "feature_kd_smoke" / "metrics.csv").read_text()
    assert "train_feat_l2" in rows and "train_feat_cos" in rows


def test_data_root_defaults_to_the_DATA_ROOT_environment_variable(root, monkeypatch):
    from mmdistill.preflight import load_config

    monkeypatch.setenv("DATA_ROOT", str(root))
    assert load_config(RECIPE).data.root == root


@pytest.mark.parametrize("damage, message", [
    ("missing", "embeddings.npy: file not found; write it with `mmdistill extract"),
    ("rows", "expected [40, 2, dim]"),
    ("seed", "views were drawn with seed 7"),
])
def test_bad_embeddings_exit_2_naming_the_file(root, tmp_path, capsys, damage, message):
    path = root / "train_embeddings" / "embeddings.npy"
    if damage == "missing":
        path.unlink()
    elif damage == "rows":
        np.save(path, np.load(path)[:-3])
    else:
        meta = json.loads((root / "train_embeddings" / "meta.json").read_text())
        (root / "train_embeddings" / "meta.json").write_text(json.dumps({**meta, "seed": 7}))
    assert main(["run", *_args(root, tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert message in err and "train_embeddings" in err
    assert not (tmp_path / "runs").exists()  # nothing written before the data was checked


def test_views_must_match_the_extracted_views(root, tmp_path, capsys):
    assert main(["run", *_args(root, tmp_path / "runs", "--set", "data.views=3")]) == 2
    assert "num_views" in capsys.readouterr().err
