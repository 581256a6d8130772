"""Decoded-image cache: every image is decoded and resized once per resolution into an array of
integers on disk, and every stage and epoch reads its row instead of the file.

Decoding a PNG and resizing it costs far more than reading its row back, and it is the same
work every epoch, every stage and every sweep variant. Rows are stored as uint8
(round(x * 255)), which is what an 8-bit source holds anyway; a modality whose files hold more
than 8 bits (16-bit or float PIL modes) is stored as uint16 so it loses nothing it had.

The key (`keys.images_key`) hashes each record's image file by path, size and content digest
(`file_digests.py`), so a stale cache is never read. Stores are written atomically and checked on open (`store.py`), so an
interrupted build or a truncated file is rebuilt, never read. Rows are read by offset, not
mapped, so a process's RSS does not grow with the size of the cache.
"""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from mmdistill.cache import kind_dir
from mmdistill.cache.keys import image_paths, images_key
from mmdistill.cache.store import ArrayStore, StoreWriter, open_or_build
from mmdistill.config.schema import hw
from mmdistill.data.dataset import load_data
from mmdistill.data.images import SIXTEEN_BIT

if TYPE_CHECKING:
    from mmdistill.config.schema import ExperimentConfig
    from mmdistill.data.dataset import DataBundle, MultiModalDataset

log = logging.getLogger(__name__)

ARRAY = "images"
WIDE_MODES = SIXTEEN_BIT | {"I", "F"}  # PIL modes with more than 8 bits per value
BATCH = 32


class ImageCache:
    """The read side a dataset holds: sample i's image as float32 [C, S, S] in [0, 1]."""

    def __init__(self, store: ArrayStore):
        self.store = store
        self.scale = float(np.iinfo(np.dtype(store.arrays[ARRAY]["dtype"])).max)

    def __len__(self) -> int:
        return self.store.shape(ARRAY)[0]

    def image(self, index: int) -> torch.Tensor:
        row = self.store.read(ARRAY, int(index)).astype(np.float32)
        return torch.from_numpy(np.divide(row, self.scale, out=row))


def size_label(size: Any) -> str:
    """`32px` for a square, `32x48px` for [height, width]."""
    h, w = hw(size)
    return f"{h}px" if h == w else f"{h}x{w}px"


def cache_path(config: "ExperimentConfig", split: str, name: str, spec: Any, key: str) -> Path:
    """Readable for someone looking into the cache folder; the key prefix keeps versions apart."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", name)
    return kind_dir(config, "images") / f"{split}-{safe}-{size_label(spec.size)}-{key[:16]}"


def _is_wide(paths: list[str]) -> bool:
    """Whether any file holds more than 8 bits per value (reads the header only)."""
    for path in paths:
        try:
            with Image.open(path) as img:
                if img.mode in WIDE_MODES:
                    return True
        except OSError:
            pass
    return False


class _Decode(Dataset):
    """The decode-only work of a build, run in DataLoader workers: sample i's image quantised
    to `dtype`, and whether its files hold more than 8 bits. Decoding goes through the dataset's
    own file path (`index` None), so it is exactly what training would decode and an unreadable
    file is reported with its record's origin."""

    def __init__(self, dataset: "MultiModalDataset", name: str, spec: Any, dtype: np.dtype):
        self.dataset, self.name, self.spec, self.dtype = dataset, name, spec, np.dtype(dtype)
        self.scale = float(np.iinfo(self.dtype).max)

    def __len__(self) -> int:
        return len(self.dataset.records)

    def __getitem__(self, i: int) -> tuple[np.ndarray, bool]:
        record = self.dataset.records[i]
        image = self.dataset._image(record, self.name, self.spec).numpy()
        wide = self.dtype == np.uint8 and _is_wide(image_paths(record, self.name, self.spec))
        return np.rint(image * self.scale).astype(self.dtype), wide


def _stack(items: list[tuple[np.ndarray, bool]]) -> tuple[np.ndarray, bool]:
    return np.stack([rows for rows, _ in items]), any(wide for _, wide in items)


class _WiderThanFirst(Exception):
    """A file holds more bits than the first one suggested: the build restarts as uint16."""


def _build(path: Path, key: str, dataset: "MultiModalDataset", split: str, name: str, spec: Any,
           config: "ExperimentConfig", dtype: np.dtype) -> ArrayStore:
    n, shape = len(dataset.records), (spec.total_channels, *hw(spec.size))
    # its own generator: iterating a DataLoader draws a seed, and building must not move the
    # global RNG, or a run that builds the cache would train differently from one that reuses it
    loader = DataLoader(_Decode(dataset, name, spec, dtype), batch_size=BATCH, collate_fn=_stack,
                        num_workers=config.data.num_workers, generator=torch.Generator().manual_seed(0))
    path.parent.mkdir(parents=True, exist_ok=True)
    info = {"split": split, "modality": name, "size": spec.size, "samples": n}
    with StoreWriter(path, key, info) as writer:
        writer.declare(ARRAY, (n, *shape), dtype)
        with tqdm(total=n, desc=f"decoding images ({split}, {name} {size_label(spec.size)})", unit="img", leave=False,
                  disable=not config.logging.progress_bar) as bar:
            for rows, wide in loader:
                if wide:
                    raise _WiderThanFirst
                writer.append(ARRAY, rows)
                bar.update(len(rows))
        return writer.commit()


def _build_widening(path: Path, key: str, dataset: "MultiModalDataset", split: str, name: str, spec: Any,
                    config: "ExperimentConfig") -> ArrayStore:
    """A build as uint8, restarted as uint16 when a file turns out to hold more than 8 bits."""
    start = time.perf_counter()
    dtype = np.dtype(np.uint16 if _is_wide(image_paths(dataset.records[0], name, spec)) else np.uint8)
    try:
        store = _build(path, key, dataset, split, name, spec, config, dtype)
    except _WiderThanFirst:
        dtype = np.dtype(np.uint16)
        store = _build(path, key, dataset, split, name, spec, config, dtype)
    log.info("decoded images (%s, %s %s, %d samples, %s) in %.1f s, cached in %s", split, name, size_label(spec.size),
             len(dataset.records), dtype.name, time.perf_counter() - start, path)
    return store


def open_or_build_images(dataset: "MultiModalDataset", split: str, name: str,
                         config: "ExperimentConfig") -> ImageCache | None:
    """The cache of modality `name` of `dataset`, built now if missing, stale or damaged; None
    when it cannot be written (the dataset then decodes the files)."""
    spec = dataset._image_specs[name]
    key = images_key(dataset.records, name, spec)
    path = cache_path(config, split, name, spec, key)
    shape = (len(dataset.records), spec.total_channels, *hw(spec.size))
    store, built = open_or_build(path, key, lambda: _build_widening(path, key, dataset, split, name, spec, config),
                                 "decoded-image", valid=lambda store: store.shape(ARRAY) == shape)
    if store is None:
        return None
    if not built:
        log.info("reusing decoded images (%s, %s %s, %d samples) from %s", split, name, size_label(spec.size), shape[0],
                 path)
    return ImageCache(store)


def attach_image_caches(data: "DataBundle", config: "ExperimentConfig", modalities: set[str] | None = None) -> None:
    """Give every split's dataset a decoded-image cache for each image / stacked_image modality
    it reads (or only those in `modalities`), building the ones missing."""
    for split, dataset in data.datasets.items():
        if not dataset.records:
            continue
        for name in dataset._image_specs:
            if modalities is None or name in modalities:
                cache = open_or_build_images(dataset, split, name, config)
                if cache is not None:
                    dataset.attach_image_cache(name, cache)


def attach_caches(data: "DataBundle", config: "ExperimentConfig", modalities: set[str] | None = None) -> "DataBundle":
    """With `cache.images` on, every image is decoded and resized once into a uint8 array that
    all stages and epochs read instead of the files (`modalities`: only these). The image files'
    content digests are recorded here too, the first cache write of a run whose data passed its
    checks (`cache/file_digests.py`)."""
    if data.file_digests is not None:
        data.file_digests.save()
    if config.cache.images:
        attach_image_caches(data, config, modalities)
    return data


def load_checked_data(config: "ExperimentConfig") -> "DataBundle":
    """The records, labels and tasks as every command reads them, checked, with nothing written:
    `mean: dataset` statistics and the files' content digests come from their memos, and what is
    new is recorded only by `attach_caches`, once a run has passed its checks."""
    from mmdistill.cache.file_digests import FileDigestsMemo
    from mmdistill.cache.stats import ImageStatsCache

    return load_data(config, ImageStatsCache(config), FileDigestsMemo(config))


def load_run_data(config: "ExperimentConfig") -> "DataBundle":
    """The data as a run reads it: records from the files, images from the decoded-image cache."""
    return attach_caches(load_checked_data(config), config)
