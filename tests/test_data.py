"""The table source: formats, layouts, label discovery, and errors that name file and row."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import torch
import pytest

from conftest import tiny_config
from mmdistill.config.schema import ExperimentConfig
from mmdistill.data.dataset import load_data
from mmdistill.errors import UserError


def _rows(root, split):
    with (root / f"{split}.csv").open() as fh:
        return list(csv.DictReader(fh))


def _copy(demo_root, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(demo_root, root)
    return root


def _config(root, tmp_path, **data_updates) -> ExperimentConfig:
    raw = tiny_config(root, tmp_path / "runs", text_teacher=True)
    raw["data"].update(data_updates)
    return ExperimentConfig.model_validate(raw)


def test_csv_per_split(demo_root, tmp_path):
    data = load_data(_config(demo_root, tmp_path))
    assert [len(data.datasets[s]) for s in ("train", "dev", "test")] == [64, 32, 32]
    finding = next(t for t in data.tasks if t.name == "finding")
    assert finding.classes == ("horizontal_mild", "horizontal_severe", "vertical_mild", "vertical_severe")
    item = data.datasets["train"][3]
    assert item["index"] == 3
    assert item["inputs"]["image"].shape == (3, 16, 16)
    assert isinstance(item["inputs"]["report"], str)
    assert item["labels"]["urgent"].dtype.is_floating_point


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_single_file_with_split_column(demo_root, tmp_path, fmt):
    root = _copy(demo_root, tmp_path)
    rows = [dict(r, split=s, urgent=int(r["urgent"])) for s in ("train", "dev", "test") for r in _rows(root, s)]
    if fmt == "jsonl":
        (root / "all.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), root / "all.parquet")
    data = load_data(_config(root, tmp_path, files=None, file=f"all.{fmt}"))
    assert [len(data.datasets[s]) for s in ("train", "dev", "test")] == [64, 32, 32]


def test_embedding_column(demo_root, tmp_path):
    root = _copy(demo_root, tmp_path)
    rows = [dict(r, split=s, vec=[float(i), 1.0, 2.0]) for s in ("train", "dev", "test") for i, r in enumerate(_rows(root, s))]
    (root / "all.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    raw = tiny_config(root, tmp_path / "runs")
    raw["data"].update(files=None, file="all.jsonl")
    raw["data"]["modalities"]["vec"] = {"kind": "embedding", "column": "vec"}
    raw["teacher"]["encoders"]["vec"] = {"type": "mlp", "hidden": [4]}
    data = load_data(ExperimentConfig.model_validate(raw))
    assert data.embedding_dims == {"vec": 3}
    assert np.allclose(data.datasets["train"][5]["inputs"]["vec"].numpy(), [5.0, 1.0, 2.0])


def _rewrite(root, split, mutate):
    rows = _rows(root, split)
    mutate(rows)
    with (root / f"{split}.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]) if rows else ["image", "report", "finding", "urgent"])
        writer.writeheader()
        writer.writerows(rows)


def _load_error(root, tmp_path) -> str:
    with pytest.raises(UserError) as exc:
        load_data(_config(root, tmp_path))
    return str(exc.value)


def test_unseen_dev_label_names_file_and_line(demo_root, tmp_path):
    root = _copy(demo_root, tmp_path)
    _rewrite(root, "dev", lambda rows: rows[4].update(finding="diagonal_mild"))
    msg = _load_error(root, tmp_path)
    assert "dev.csv line 6" in msg and "'diagonal_mild'" in msg and "never appears in train" in msg


def test_missing_image_names_file_line_and_path(demo_root, tmp_path):
    root = _copy(demo_root, tmp_path)
    _rewrite(root, "test", lambda rows: rows[0].update(image="images/nope.png"))
    msg = _load_error(root, tmp_path)
    assert "test.csv line 2" in msg and "images/nope.png" in msg


def test_image_paths_are_the_users_absolute_or_relative_to_the_root(demo_root, tmp_path):
    """Seed 002's CSV lists absolute paths; relative ones (`..` included) start at the root."""
    root = _copy(demo_root, tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "a.png").write_bytes((root / "images" / "train_0000.png").read_bytes())

    def point(rows):
        rows[0]["image"] = str(elsewhere / "a.png")
        rows[1]["image"] = "../elsewhere/a.png"

    _rewrite(root, "train", point)
    records = load_data(_config(root, tmp_path)).datasets["train"].records
    assert records[0].values["image"] == records[1].values["image"] == str((elsewhere / "a.png").resolve())

    _rewrite(root, "train", lambda rows: rows[2].update(image=str(tmp_path / "missing.png")))
    msg = _load_error(root, tmp_path)
    assert "train.csv line 4" in msg and f"image not found: {tmp_path / 'missing.png'}" in msg


def test_missing_column_is_named(demo_root, tmp_path):
    root = _copy(demo_root, tmp_path)
    _rewrite(root, "dev", lambda rows: [r.pop("report") for r in rows])
    msg = _load_error(root, tmp_path)
    assert "dev.csv" in msg and "missing column 'report'" in msg


def test_empty_split_is_an_error(demo_root, tmp_path):
    root = _copy(demo_root, tmp_path)
    _rewrite(root, "test", lambda rows: rows.clear())
    assert "the test split is empty" in _load_error(root, tmp_path)


def test_bad_binary_label(demo_root, tmp_path):
    root = _copy(demo_root, tmp_path)
    _rewrite(root, "train", lambda rows: rows[2].update(urgent="maybe"))
    msg = _load_error(root, tmp_path)
    assert "train.csv line 4" in msg and "binary label" in msg


def test_malformed_jsonl_line(demo_root, tmp_path):
    root = _copy(demo_root, tmp_path)
    rows = [dict(r, split=s) for s in ("train", "dev", "test") for r in _rows(root, s)]
    lines = [json.dumps(r) for r in rows]
    lines[9] = lines[9][:-3]
    (root / "all.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError, match=r"all\.jsonl line 10: malformed JSON"):
        load_data(_config(root, tmp_path, files=None, file="all.jsonl"))


def test_augmentation_is_shared_across_image_modalities_reproducible_and_train_only(demo_root, tmp_path):
    raw = tiny_config(demo_root, tmp_path / "runs")
    raw["data"]["modalities"]["copy"] = {"kind": "image", "column": "image", "channels": 3, "size": 16}
    raw["teacher"]["encoders"]["copy"] = {"type": "tiny_cnn", "widths": [4]}
    raw["data"]["augment"] = {"rotation_degrees": 30, "horizontal_flip_prob": 0.5, "brightness": 0.4, "translate": [0.1, 0.1]}
    config = ExperimentConfig.model_validate(raw)
    data = load_data(config)
    first = data.datasets["train"][(5, 0)]["inputs"]
    assert torch.equal(first["image"], first["copy"])  # one draw per (sample, view), applied alike
    assert torch.equal(data.datasets["train"][5]["inputs"]["image"], first["image"])  # a plain index is view 0
    second = data.datasets["train"][(5, 1)]["inputs"]["image"]
    assert not torch.equal(first["image"], second)  # another view is another draw
    again = load_data(config).datasets["train"][(5, 0)]["inputs"]["image"]
    assert torch.equal(again, first["image"])  # same seed, same views
    plain = ExperimentConfig.model_validate({**raw, "data": {**raw["data"], "augment": None}})
    assert torch.equal(load_data(plain).datasets["dev"][2]["inputs"]["image"], data.datasets["dev"][2]["inputs"]["image"])
