"""Image mean/std: numbers, `dataset` (computed over train) and `imagenet` (mmdistill/data/stats.py,
the schema's checks, and load_data handing the resolved numbers to the datasets)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import tiny_config, write_config
from mmdistill.preflight import load_config
from mmdistill.config.schema import ImageModality, StackedImageModality
from mmdistill.data.dataset import load_data
from mmdistill.data.images import load_image
from mmdistill.data.records import Record
from mmdistill.data.stats import dataset_stats, image_stats, imagenet_stats, resolve_image_stats
from mmdistill.errors import UserError


def _png(path, array: np.ndarray) -> str:
    Image.fromarray(array).save(path)
    return str(path)


@pytest.fixture
def images(tmp_path):
    """Four RGB images of different sizes and brightness, and a gray one per record."""
    rng = np.random.default_rng(0)
    records = []
    for i, size in enumerate((8, 8, 12, 5)):
        rgb = (rng.uniform(0, 1, (size, size, 3)) * [1.0, 0.5, 0.2] * 255 + 10 * i).clip(0, 255).astype(np.uint8)
        gray = rng.integers(0, 256, (size, size), dtype=np.uint8)
        records.append(Record(f"train.csv line {i + 2}", {"img": _png(tmp_path / f"rgb{i}.png", rgb),
                                                          "ir": _png(tmp_path / f"ir{i}.png", gray)}, {}))
    return records


def _numpy_stats(tensors: list[torch.Tensor]) -> tuple[np.ndarray, np.ndarray]:
    pixels = np.concatenate([t.double().numpy().reshape(t.shape[0], -1) for t in tensors], axis=1)
    return pixels.mean(axis=1), pixels.std(axis=1)


def test_dataset_stats_equal_numpy_over_the_decoded_images(images):
    spec = ImageModality(kind="image", column="img", size=6, mean="dataset", std="dataset")
    mean, std = dataset_stats(images, "img", spec, progress=False)
    want_mean, want_std = _numpy_stats([load_image(r.values["img"], 3, 6) for r in images])
    np.testing.assert_allclose(mean, want_mean, rtol=1e-12)
    np.testing.assert_allclose(std, want_std, rtol=1e-12)
    assert mean[0] > mean[1] > mean[2]  # the channels were scaled differently: not one number thrice


def test_stacked_dataset_stats_concatenate_the_parts(images):
    stacked = [Record(r.origin, {"both": (r.values["img"], r.values["ir"])}, {}) for r in images]
    spec = StackedImageModality(kind="stacked_image", columns=["img", "ir"], channels=[3, 1], size=7,
                                mean="dataset", std="dataset")
    resolved = resolve_image_stats({"both": spec}, stacked, progress=False)["both"]
    want_mean, want_std = _numpy_stats([torch.cat([load_image(a, 3, 7), load_image(b, 1, 7)])
                                        for a, b in (r.values["both"] for r in stacked)])
    np.testing.assert_allclose(resolved.mean, want_mean, rtol=1e-12)
    np.testing.assert_allclose(resolved.std, want_std, rtol=1e-12)
    assert spec.mean == "dataset"  # a copy is resolved, the config is left as written


def test_constant_channel_gets_std_one(images):
    """Opaque RGB decoded to 4 channels: alpha is 1 everywhere, and dividing by 0 would blow up."""
    spec = ImageModality(kind="image", column="img", channels=4, size=4, mean="dataset", std="dataset")
    mean, std = dataset_stats(images, "img", spec, progress=False)
    assert mean[3] == pytest.approx(1.0) and std[3] == 1.0 and all(0 < s < 1 for s in std[:3])


def test_imagenet_numbers_are_exact():
    def resolved(**kw):
        spec = (StackedImageModality(kind="stacked_image", columns=["a", "b"], **kw) if isinstance(kw["channels"], list)
                else ImageModality(kind="image", column="a", **kw))
        out = resolve_image_stats({"m": spec}, [], progress=False)["m"]
        return out.mean, out.std

    rgb_mean, rgb_std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    assert resolved(channels=3, mean="imagenet", std="imagenet") == (rgb_mean, rgb_std)
    assert resolved(channels=1, mean="imagenet", std="imagenet") == ([0.449], [0.226])
    assert resolved(channels=4, mean="imagenet", std="imagenet") == (rgb_mean + [0.5], rgb_std + [0.5])
    assert resolved(channels=[3, 1], mean="imagenet", std="imagenet") == (rgb_mean + [0.449], rgb_std + [0.226])
    assert imagenet_stats([1, 1]) == ([0.449, 0.449], [0.226, 0.226])
    # null is 0.5 / 0.5, lists are kept; no train images are needed for either
    assert resolved(channels=1) == ([0.5], [0.5])
    assert resolved(channels=3, mean=[0.1, 0.2, 0.3], std=[1, 2, 3]) == ([0.1, 0.2, 0.3], [1.0, 2.0, 3.0])


def test_only_used_image_modalities_are_computed(images):
    broken = [Record("x", {"img": "/does/not/exist.png"}, {})]
    spec = ImageModality(kind="image", column="img", mean="dataset", std="dataset")
    assert resolve_image_stats({"img": spec}, broken, used=set(), progress=False)["img"] is spec
    with pytest.raises(UserError, match="x: cannot read image /does/not/exist.png"):
        resolve_image_stats({"img": spec}, broken, progress=False)
    with pytest.raises(UserError, match="data.modalities.img: .*train split is empty"):
        resolve_image_stats({"img": spec}, [], progress=False)


@pytest.mark.parametrize("image, message", [
    ({"mean": [0.1, 0.2], "std": [0.1, 0.2, 0.3]}, r"data\.modalities\.image\.mean: `mean` needs one value per channel \(3\), got 2"),
    ({"mean": [0.1] * 3, "std": [0.1] * 4}, r"data\.modalities\.image\.std: `std` needs one value per channel \(3\), got 4"),
    ({"mean": [0.1] * 3, "std": [0.1, 0.0, 0.1]}, r"data\.modalities\.image\.std: `std` values must be positive"),
    ({"mean": "dataset", "std": "imagenet"}, r"data\.modalities\.image\.std: give `mean` and `std` the same way"),
    ({"mean": "dataset"}, r"image\.std: give .* got mean 'dataset' and std null"),
    ({"mean": [0.5] * 3}, r"image\.std: give .* got mean a list and std null"),
    ({"std": "imagenet"}, r"image\.std: give .* got mean null and std 'imagenet'"),
    ({"mean": "median", "std": "median"}, r"data\.modalities\.image\.mean"),
])
def test_bad_mean_std_errors_name_the_key(demo_root, tmp_path, image, message):
    raw = tiny_config(demo_root, tmp_path)
    raw["data"]["modalities"]["image"].update(image)
    with pytest.raises(UserError, match=message):
        load_config(write_config(tmp_path / "c.yaml", raw))


def test_stacked_list_length_is_the_total_channel_count():
    with pytest.raises(ValueError, match=r"mean\n.*needs one value per channel \(4\), got 3"):
        StackedImageModality(kind="stacked_image", columns=["a", "b"], channels=[3, 1], mean=[0.1] * 3, std=[0.1] * 4)


def test_load_data_normalises_with_the_train_statistics(demo_root, tmp_path):
    raw = tiny_config(demo_root, tmp_path)
    raw["data"]["modalities"]["image"].update(mean="dataset", std="dataset")
    config = load_config(write_config(tmp_path / "c.yaml", raw))
    data = load_data(config)
    train = data.datasets["train"].records
    want_mean, want_std = _numpy_stats([load_image(r.values["image"], 3, 16) for r in train])
    resolved = data.modalities["image"]
    np.testing.assert_allclose(resolved.mean, want_mean, rtol=1e-12)
    np.testing.assert_allclose(resolved.std, want_std, rtol=1e-12)
    assert image_stats(data.modalities) == {"image": {"mean": resolved.mean, "std": resolved.std}}
    assert config.data.modalities["image"].mean == "dataset"  # config.yaml keeps what the user wrote
    # every split is normalised with the train numbers
    record = data.datasets["dev"].records[0]
    expected = (load_image(record.values["image"], 3, 16) - torch.tensor(want_mean).view(-1, 1, 1).float()) \
        / torch.tensor(want_std).view(-1, 1, 1).float()
    torch.testing.assert_close(data.datasets["dev"][0]["inputs"]["image"], expected)
    pixels = torch.stack([data.datasets["train"][i]["inputs"]["image"] for i in range(len(train))]).double()
    assert pixels.mean(dim=(0, 2, 3)).abs().max() < 1e-5  # all train images are the same size: mean 0
    assert (pixels.std(dim=(0, 2, 3), unbiased=False) - 1).abs().max() < 1e-5
