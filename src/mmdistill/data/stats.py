"""Per-channel mean/std of image modalities: the words `dataset` and `imagenet` become numbers.

`dataset` is seed 004's `compute_stats`: every train image is decoded exactly as training
decodes it (the modality's channels and size) but before augmentation, and the statistics are
over all pixels of all those images (population std, as numpy's default). They are merged image
by image in float64 (Chan et al.'s pairwise update), so memory does not grow with the data set
and a channel whose values are all close to their mean loses no precision.

`imagenet` is the statistics pretrained timm/torchvision backbones were trained with, adapted
per decoded image part (a stacked modality concatenates its parts):
  3 channels: mean (0.485, 0.456, 0.406), std (0.229, 0.224, 0.225);
  1 channel (gray, IR, CT): the average of those, 0.449 / 0.226, which is what a pretrained
    RGB stem adapted to one input channel (timm sums its filters) effectively sees;
  4 channels (RGB + alpha): RGB as above, and 0.5 / 0.5 for alpha, which is the project's
    neutral default (maps [0, 1] to [-1, 1]); ImageNet has no alpha channel to borrow from.
`null` is 0.5 / 0.5 for every channel, as before.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Iterable, Mapping

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from mmdistill.config.schema import ModalitySpec
from mmdistill.data.images import load_image
from mmdistill.data.records import Record
from mmdistill.errors import UserError

log = logging.getLogger(__name__)

IMAGENET_RGB = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
IMAGENET_GRAY = ((0.449,), (0.226,))
ALPHA = ((0.5,), (0.5,))
NEUTRAL = 0.5
# a channel that never varies (an alpha channel of opaque images) would divide by ~0: it is
# only centred (std 1), and the user sees the 1.0 in the recorded numbers
MIN_STD = 1e-6


def imagenet_stats(parts: Iterable[int]) -> tuple[list[float], list[float]]:
    """Mean and std for images decoded to `parts` channels each (one entry per stacked column)."""
    mean: list[float] = []
    std: list[float] = []
    for channels in parts:
        m, s = {1: IMAGENET_GRAY, 3: IMAGENET_RGB, 4: (IMAGENET_RGB[0] + ALPHA[0], IMAGENET_RGB[1] + ALPHA[1])}[channels]
        mean += m
        std += s
    return mean, std


def _parts(spec: Any) -> list[int]:
    return list(spec.channels) if spec.kind == "stacked_image" else [spec.channels]


def _paths(record: Record, name: str, spec: Any) -> tuple[str, ...]:
    value = record.values[name]
    return tuple(value) if spec.kind == "stacked_image" else (value,)


class _Moments(Dataset):
    """Per image: (pixel count, per-channel mean, per-channel sum of squared deviations)."""

    def __init__(self, records: list[Record], name: str, spec: Any):
        self.records, self.name, self.spec = records, name, spec

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> tuple[int, np.ndarray, np.ndarray]:
        record = self.records[i]
        parts = []
        for path, channels in zip(_paths(record, self.name, self.spec), _parts(self.spec)):
            try:
                parts.append(load_image(path, channels, self.spec.size))
            except (OSError, ValueError) as exc:
                raise UserError(f"{record.origin}: cannot read image {path}: {exc}") from None
        pixels = torch.cat(parts).flatten(1).double().numpy()  # [C, H*W]
        mean = pixels.mean(axis=1)
        return pixels.shape[1], mean, ((pixels - mean[:, None]) ** 2).sum(axis=1)


Moments = tuple[int, np.ndarray, np.ndarray]  # (pixel count, per-channel mean, sum of squared deviations)
BATCH = 64  # images a loader worker merges before handing one result over (one IPC per image cost more than it)


def merge_moments(a: Moments, b: Moments) -> Moments:
    """Chan et al.'s pairwise update: the moments of two sets of pixels, from each set's."""
    (n_a, mean_a, m2_a), (n_b, mean_b, m2_b) = a, b
    total = n_a + n_b
    delta = mean_b - mean_a
    return total, mean_a + delta * (n_b / total), m2_a + m2_b + delta**2 * (n_a * n_b / total)


def _merge_batch(items: list[Moments]) -> Moments:
    merged = items[0]
    for item in items[1:]:
        merged = merge_moments(merged, item)
    return merged


def dataset_stats(records: list[Record], name: str, spec: Any, progress: bool = True,
                  num_workers: int = 0) -> tuple[list[float], list[float]]:
    """Per-channel mean and (population) std over all pixels of the records' images."""
    if not records:
        raise UserError(f"data.modalities.{name}: mean/std 'dataset' needs train images, and the train split is empty")
    loader = DataLoader(_Moments(records, name, spec), batch_size=BATCH, collate_fn=_merge_batch,
                        num_workers=num_workers)
    moments: Moments = (0, np.zeros(spec.total_channels), np.zeros(spec.total_channels))
    with tqdm(total=len(records), desc=f"image statistics ({name})", unit="img", leave=False,
              disable=not progress) as bar:
        for batch in loader:
            moments = merge_moments(moments, batch)
            bar.update(min(BATCH, len(records) - bar.n))
    count, mean, m2 = moments
    std = np.sqrt(m2 / count)
    std = np.where(std < MIN_STD, 1.0, std)
    return mean.tolist(), std.tolist()


def resolve_image_stats(modalities: Mapping[str, ModalitySpec], train_records: Any,
                        used: set[str] | None = None, progress: bool = True,
                        num_workers: int = 0, memo: Any = None) -> dict[str, ModalitySpec]:
    """Copies of `modalities` whose image modalities carry numbers for `mean` and `std`
    (the words and null resolved); other modalities, and ones not in `used`, are as given.
    `memo` (`cache/stats.ImageStatsCache`) keeps `dataset` statistics across runs."""
    out: dict[str, ModalitySpec] = {}
    for name, spec in modalities.items():
        if spec.kind not in ("image", "stacked_image") or (used is not None and name not in used):
            out[name] = spec
            continue
        if spec.mean == "dataset":
            key = memo.key(train_records, name, spec) if memo is not None and train_records else None
            found = memo.get(key) if key is not None else None
            if found is None:
                started = time.perf_counter()
                mean, std = dataset_stats(train_records, name, spec, progress, num_workers)
                log.info("image statistics (train, %s, %d images) computed in %.1f s", name, len(train_records),
                         time.perf_counter() - started)
                if key is not None:
                    memo.put(key, mean, std, name)
            else:
                mean, std = found
        elif spec.mean == "imagenet":
            mean, std = imagenet_stats(_parts(spec))
        elif spec.mean is None:
            mean, std = [NEUTRAL] * spec.total_channels, [NEUTRAL] * spec.total_channels
        else:
            mean, std = list(spec.mean), list(spec.std)
        out[name] = spec.model_copy(update={"mean": mean, "std": std})
    return out


def image_stats(modalities: Mapping[str, ModalitySpec]) -> dict[str, dict[str, list[float]]]:
    """{modality: {"mean": [...], "std": [...]}} of resolved image modalities, for results.json
    (an exported student expects its inputs normalised with exactly these numbers)."""
    return {name: {"mean": list(spec.mean), "std": list(spec.std)} for name, spec in modalities.items()
            if spec.kind in ("image", "stacked_image") and isinstance(spec.mean, list)}
