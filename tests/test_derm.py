"""Seed 004's data filters, stratified random splits and the embedding join."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from mmdistill.preflight import load_config
from mmdistill.data.dataset import load_data
from mmdistill.data.demo import write_derm
from mmdistill.errors import UserError

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "derm.yaml"


@pytest.fixture(scope="module")
def derm_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("derm")
    write_derm(root, seed=2, n=120)
    return root


def _data(root, *overrides):
    return load_data(load_config(RECIPE, [f"data.root={root}", "teacher.encoders.image.pretrained=false", *overrides]))


def _records(data):
    return [r for s in ("train", "dev", "test") for r in data.datasets[s].records]


def test_stratified_split_by_seed(derm_root):
    data = _data(derm_root)
    sizes = [len(data.datasets[s]) for s in ("train", "dev", "test")]
    assert sum(sizes) == 120 and sizes[2] == 18 and sizes[1] == 18  # 15% + 15%
    again = _data(derm_root)
    assert [r.origin for r in again.datasets["test"].records] == [r.origin for r in data.datasets["test"].records]
    other = _data(derm_root, "data.split_seed=7")
    assert [r.origin for r in other.datasets["test"].records] != [r.origin for r in data.datasets["test"].records]


def test_filters(derm_root):
    only_isic = _records(_data(derm_root, "data.datasets=[isic]", "data.min_samples_per_label=1"))
    assert only_isic and len(only_isic) < 120
    with_text = _records(_data(derm_root, "data.has_text=true"))
    assert all(r.values["text"].any() for r in with_text)
    without = _data(derm_root, "data.has_text=false", "data.min_samples_per_label=1")
    assert all(r.values["text"] is None for r in _records(without))  # no embedding: the modality is absent
    item = without.datasets["train"][0]  # which the models read as masked, not as a zero vector
    assert item["inputs"]["_absent"] == {"text": True} and not item["inputs"]["text"].any()
    assert len(with_text) + len(_records(without)) == 120
    half = _records(_data(derm_root, "data.data_fraction=0.5"))
    assert len(half) == 60


def test_rare_labels_are_dropped(derm_root):
    full = Counter(r.labels["label"] for r in _records(_data(derm_root)))
    rarest, threshold = min(full, key=full.get), sorted(full.values())[1]
    counts = Counter(r.labels["label"] for r in _records(_data(derm_root, f"data.min_samples_per_label={threshold}")))
    assert rarest not in counts and all(n >= threshold for n in counts.values())


def test_embedding_join_by_image_id(derm_root):
    import pyarrow.parquet as pq

    table = pq.read_table(derm_root / "text_embeddings.parquet").to_pylist()
    vectors = {row["image_id"]: row["embedding"] for row in table}
    record = next(r for r in _records(_data(derm_root, "data.has_text=true")))
    image_id = Path(record.values["image"]).stem
    assert np.allclose(record.values["text"], vectors[image_id])


def test_missing_embedding_column_is_named(derm_root, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist([{"image_id": "x", "vec": [1.0]}]), tmp_path / "bad.parquet")
    with pytest.raises(UserError, match=r"bad\.parquet: missing column 'embedding'"):
        _data(derm_root, f"data.embeddings={tmp_path / 'bad.parquet'}")
