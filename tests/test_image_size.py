"""Non-square images (seed 004's img_size [height, width]) through decoding, the decoded-image
cache, augmentation, the models and a run."""

from __future__ import annotations

import numpy as np

from conftest import tiny_config, write_config
from mmdistill.cache.images import ARRAY, attach_image_caches
from mmdistill.data.dataset import load_data
from mmdistill.data.images import load_image
from mmdistill.preflight import load_config
from mmdistill.run.experiment import run_experiment


def _raw(demo_root, out):
    raw = tiny_config(demo_root, out)
    raw["data"]["modalities"]["image"]["size"] = [12, 20]
    raw["data"]["augment"] = {"rotation_degrees": 10, "horizontal_flip_prob": 0.5}
    raw["training"]["teacher"]["epochs"] = 1
    raw["training"]["student"]["epochs"] = 1
    raw["logging"]["plots"] = False
    return raw


def test_images_decode_cache_and_augment_at_height_by_width(demo_root, tmp_path):
    config = load_config(write_config(tmp_path / "c.yaml", _raw(demo_root, tmp_path)))
    assert config.data.modalities["image"].size == (12, 20)
    first = load_data(config).datasets["train"].records[0].values["image"]
    assert tuple(load_image(first, 3, (12, 20)).shape) == (3, 12, 20)
    data = load_data(config)
    attach_image_caches(data, config)
    store = data.datasets["train"]._image_caches["image"].store
    assert store.shape(ARRAY) == (64, 3, 12, 20)
    assert "-12x20px-" in store.path.name
    item = data.datasets["train"][(0, 1)]  # an augmented view
    assert tuple(item["inputs"]["image"].shape) == (3, 12, 20)


def test_a_run_trains_on_non_square_images(demo_root, tmp_path):
    raw = _raw(demo_root, tmp_path)
    raw["teacher"]["encoders"]["image"] = {"type": "timm", "name": "test_vit", "input_size": [16, 32]}
    results = run_experiment(load_config(write_config(tmp_path / "c.yaml", raw)))
    assert np.isfinite(results["student"]["test"]["score"]) and results["teacher"]["test"]["tasks"]["finding"]["n"] == 32
