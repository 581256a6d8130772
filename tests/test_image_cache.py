"""The decoded-image cache: what it returns, when it is reused, and that a stale, truncated or
half-written cache is never read."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import mmdistill.data.dataset as dataset_module
from conftest import tiny_config
from mmdistill.config.schema import ExperimentConfig
from mmdistill.cache.store import ArrayStore
from mmdistill.data.dataset import load_data
from mmdistill.data.demo import write_demo
from mmdistill.cache.images import ARRAY, attach_image_caches
from mmdistill.errors import UserError

SIZES = {"train": 8, "dev": 4, "test": 4}
EPS = 1e-6


@pytest.fixture
def root(tmp_path) -> Path:
    """Own copy per test: tests rewrite and touch image files."""
    write_demo(tmp_path / "data", seed=3, sizes=SIZES)
    return tmp_path / "data"


def _config(root: Path, tmp_path: Path, num_workers: int = 0, channels: int = 3) -> ExperimentConfig:
    raw = tiny_config(root, tmp_path / "runs")
    raw["data"]["num_workers"] = num_workers
    raw["data"]["modalities"]["image"]["channels"] = channels
    return ExperimentConfig.model_validate(raw)


@pytest.fixture
def decodes(monkeypatch) -> list[str]:
    """Every path the dataset decodes from a file (the cache build decodes through it too)."""
    calls: list[str] = []
    real = dataset_module.load_image

    def counting(path, channels, size):
        calls.append(str(path))
        return real(path, channels, size)

    monkeypatch.setattr(dataset_module, "load_image", counting)
    return calls


def _raw(dataset, i: int) -> torch.Tensor:
    return dataset._image(dataset.records[i], "image", dataset._image_specs["image"])


def _cached(dataset, i: int) -> torch.Tensor:
    return dataset._image(dataset.records[i], "image", dataset._image_specs["image"], i)


def _stores(config: ExperimentConfig, split: str = "train") -> list[Path]:
    return sorted(p for p in (config.cache_dir / "images").glob(f"{split}-image-*") if not p.name.startswith("."))


def _rewrite(path: Path, pixels: np.ndarray) -> None:
    """New bytes and an mtime that certainly differs, even on a coarse-grained filesystem."""
    before = path.stat().st_mtime_ns
    Image.fromarray(pixels).save(path)
    os.utime(path, ns=(before + 5_000_000_000, before + 5_000_000_000))


@pytest.mark.parametrize("num_workers", [0, 2])
def test_cached_images_equal_raw_decode_within_rounding(root, tmp_path, num_workers):
    config = _config(root, tmp_path, num_workers)
    data = load_data(config)
    raw = {s: [_raw(d, i) for i in range(len(d))] for s, d in data.datasets.items()}
    items = [data.datasets["dev"][i]["inputs"]["image"] for i in range(len(data.datasets["dev"]))]
    attach_image_caches(data, config)
    for split, dataset in data.datasets.items():
        for i in range(len(dataset)):
            cached = _cached(dataset, i)
            assert cached.dtype == torch.float32 and cached.shape == raw[split][i].shape == (3, 16, 16)
            assert (cached - raw[split][i]).abs().max() <= 0.5 / 255 + EPS
    std = 0.5  # the tiny config normalises with 0.5 / 0.5
    for i, before in enumerate(items):
        assert (data.datasets["dev"][i]["inputs"]["image"] - before).abs().max() <= 0.5 / 255 / std + EPS
    assert {p.name.split("-")[0] for p in (config.cache_dir / "images").iterdir()} == {"train", "dev", "test"}


def test_second_call_reuses_and_epochs_decode_nothing(root, tmp_path, decodes, caplog):
    config = _config(root, tmp_path)
    attach_image_caches(load_data(config), config)
    assert len(decodes) == sum(SIZES.values())
    decodes.clear()
    data = load_data(config)
    with caplog.at_level("INFO", logger="mmdistill.cache.images"):
        attach_image_caches(data, config)
    assert decodes == []
    assert sum("reusing decoded images" in r.message for r in caplog.records) == 3
    for batch in data.loader("train", batch_size=4, shuffle=True, seed=0):
        assert batch["inputs"]["image"].shape == (4, 3, 16, 16)
    assert decodes == []


def test_building_the_cache_does_not_move_the_global_rng(root, tmp_path):
    """A run that builds the cache must train exactly as one that reuses it."""
    config = _config(root, tmp_path)
    for _ in range(2):  # build, then reuse
        data = load_data(config)
        torch.manual_seed(0)
        attach_image_caches(data, config)
        draws = torch.rand(3) if _ == 0 else draws
    torch.manual_seed(0)
    assert torch.equal(torch.rand(3), draws)


def test_rewritten_image_is_a_new_key_and_a_rebuild(root, tmp_path, decodes):
    config = _config(root, tmp_path)
    attach_image_caches(load_data(config), config)
    first = _stores(config)
    changed = root / "images" / "train_0003.png"
    _rewrite(changed, np.full((32, 32, 3), 200, dtype=np.uint8))
    decodes.clear()
    data = load_data(config)
    attach_image_caches(data, config)
    assert len([d for d in decodes if d.endswith("train_0003.png")]) == 1  # train rebuilt ...
    assert not [d for d in decodes if Path(d).name.startswith(("dev_", "test_"))]  # ... dev and test reused
    assert len(_stores(config)) == 2 and first[0] in _stores(config)
    assert torch.allclose(_cached(data.datasets["train"], 3), torch.full((3, 16, 16), 200 / 255), atol=EPS)


def test_truncated_bin_is_rebuilt_never_read(root, tmp_path, decodes, monkeypatch):
    config = _config(root, tmp_path)
    attach_image_caches(load_data(config), config)
    (store,) = _stores(config)
    bin_file = store / f"{ARRAY}.bin"
    full = bin_file.stat().st_size
    os.truncate(bin_file, full // 2)
    assert ArrayStore.open(store) is None
    reads: list[Path] = []
    real_read = ArrayStore.read

    def recording(self, name, rows):
        reads.append(self.path)
        assert bin_file.stat().st_size == full, "read from the truncated file"
        return real_read(self, name, rows)

    monkeypatch.setattr(ArrayStore, "read", recording)
    decodes.clear()
    data = load_data(config)
    attach_image_caches(data, config)
    assert len(decodes) == SIZES["train"]  # only train was rebuilt
    assert _stores(config) == [store] and bin_file.stat().st_size == full
    for i in range(SIZES["train"]):
        assert (_cached(data.datasets["train"], i) - _raw(data.datasets["train"], i)).abs().max() <= 0.5 / 255 + EPS
    assert reads


def test_interrupted_build_leaves_nothing_readable(root, tmp_path, monkeypatch):
    config = _config(root, tmp_path)
    real = dataset_module.load_image
    calls = []

    def dying(path, channels, size):
        calls.append(path)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return real(path, channels, size)

    monkeypatch.setattr(dataset_module, "load_image", dying)
    with pytest.raises(KeyboardInterrupt):
        attach_image_caches(load_data(config), config)
    assert list((config.cache_dir / "images").iterdir()) == []  # no store, no temporary left behind
    monkeypatch.setattr(dataset_module, "load_image", real)
    data = load_data(config)
    attach_image_caches(data, config)
    assert (_cached(data.datasets["train"], 7) - _raw(data.datasets["train"], 7)).abs().max() <= 0.5 / 255 + EPS


def test_unreadable_image_names_its_record_and_leaves_no_cache(root, tmp_path):
    config = _config(root, tmp_path)
    (root / "images" / "train_0002.png").write_bytes(b"not a png")
    with pytest.raises(UserError, match=r"train\.csv.*cannot read image .*train_0002\.png"):
        attach_image_caches(load_data(config), config)
    assert _stores(config) == []


@pytest.mark.parametrize("wide_index", [0, 5])
def test_sixteen_bit_sources_are_stored_as_uint16(root, tmp_path, wide_index):
    """Index 5: the first image is 8-bit, so the build finds out late and starts over."""
    pixels = np.random.default_rng(0).integers(0, 65536, size=(16, 16), dtype=np.uint16)
    path = root / "images" / f"train_{wide_index:04d}.png"
    Image.fromarray(pixels).save(path)
    assert Image.open(path).mode.startswith("I")
    config = _config(root, tmp_path, channels=1)
    data = load_data(config)
    attach_image_caches(data, config)
    (store,) = _stores(config)
    assert ArrayStore.open(store).arrays[ARRAY]["dtype"] == np.dtype(np.uint16).str
    error = (_cached(data.datasets["train"], wide_index) - _raw(data.datasets["train"], wide_index)).abs().max()
    assert error <= 0.5 / 65535 + EPS  # uint8 would be off by up to 0.5 / 255
    dev = ArrayStore.open(_stores(config, "dev")[0])
    assert dev.arrays[ARRAY]["dtype"] == np.dtype(np.uint8).str  # 8-bit splits stay uint8


def test_select_and_loader_keep_the_cache(root, tmp_path, monkeypatch):
    config = _config(root, tmp_path)
    data = load_data(config)
    attach_image_caches(data, config)

    def no_decoding(*args):
        raise AssertionError("decoded a file although the cache is attached")

    monkeypatch.setattr(dataset_module, "load_image", no_decoding)
    view = data.datasets["train"].select({"image"})
    assert set(view.modalities) == {"image"} and view[2]["inputs"]["image"].shape == (3, 16, 16)
    next(iter(data.loader("dev", batch_size=4, shuffle=False, seed=0, modalities={"image"})))
    assert data.datasets["train"].select({"report"})._image_caches == {}


def test_only_the_named_modalities_are_cached(root, tmp_path):
    config = _config(root, tmp_path)
    data = load_data(config)
    attach_image_caches(data, config, modalities={"report"})
    assert not (config.cache_dir / "images").exists() or _stores(config) == []
    assert all(d._image_caches == {} for d in data.datasets.values())


def test_store_reads_zero_rows(tmp_path):
    """`ArrayStore.read` of no rows is an empty batch, not a reshape error."""
    from mmdistill.cache.store import StoreWriter

    with StoreWriter(tmp_path / "s", "k") as writer:
        writer.declare("a", (2, 3, 4), np.uint8)
        writer.append("a", np.ones((2, 3, 4)))
        store = writer.commit()
    assert store.read("a", []).shape == (0, 3, 4)
