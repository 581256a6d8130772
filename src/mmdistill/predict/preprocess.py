"""Turning items into model inputs exactly as the run prepared its own: every image decoded to
its channels, resized to its [height, width] (bilinear, antialiased), quantised to the levels
the run read it at, and normalised with the run's mean and std (the model card). Decoding runs
in DataLoader worker processes, so batches are ready when the model wants them; an item that
cannot be decoded comes back as its error, not as an exception that would stop the others.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from mmdistill.data.dataset import ABSENT
from mmdistill.data.images import load_image
from mmdistill.models.card import CardInput, ModelCard
from mmdistill.predict.inputs import Item


def prepare_image(paths: list[Any], spec: CardInput) -> torch.Tensor:
    """[C, H, W] float32: the files decoded and stacked, quantised, normalised."""
    parts = []
    for path, channels in zip(paths, spec.channels):
        if path is None:
            raise ValueError(f"empty image path in column {spec.columns[len(parts)]!r}")
        parts.append(load_image(path, channels, tuple(spec.size)))
    image = torch.cat(parts) if len(parts) > 1 else parts[0]
    if spec.levels:  # what the run's decoded-image cache stored: round(x * levels) as integers, then / levels
        dtype = np.uint8 if spec.levels <= 255 else np.uint16
        stored = np.rint(image.numpy() * float(spec.levels)).astype(dtype).astype(np.float32)
        image = torch.from_numpy(np.divide(stored, float(spec.levels), out=stored))
    if spec.mean:
        mean = torch.tensor(spec.mean).view(-1, 1, 1)
        std = torch.tensor(spec.std).view(-1, 1, 1)
        image = (image - mean) / std
    return image


def prepare_embedding(value: Any, spec: CardInput) -> torch.Tensor:
    if isinstance(value, str):
        value = json.loads(value)
    vector = torch.as_tensor(np.asarray(value, dtype=np.float32))
    if vector.ndim != 1 or (spec.dim is not None and vector.numel() != spec.dim):
        raise ValueError(f"embedding of {tuple(vector.shape)} values, the model takes {spec.dim}")
    return vector


def prepare(item: Item, card: ModelCard) -> dict[str, Any]:
    """One item's inputs, keyed by model input; raises with the reason when it cannot be used."""
    inputs: dict[str, Any] = {}
    for spec in card.inputs:
        value = item.values[spec.name]
        try:
            if spec.kind == "image":
                inputs[spec.name] = prepare_image([value], spec)
            elif spec.kind == "stacked_image":
                inputs[spec.name] = prepare_image(list(value), spec)
            elif spec.kind == "embedding":
                inputs[spec.name] = prepare_embedding(value, spec)
            else:
                inputs[spec.name] = "" if value is None else str(value)
        except Exception as exc:  # PIL raises many types for unreadable files
            what = "image" if "image" in spec.kind else spec.kind
            raise ValueError(f"cannot read {what} {value}: {type(exc).__name__}: {exc}") from None
    return inputs


class Prepared(Dataset):
    """Items as (index, inputs or None, error or None), decoded in the loader's workers."""

    def __init__(self, items: list[Item], card: ModelCard):
        self.items, self.card = items, card

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[int, dict[str, Any] | None, str | None]:
        item = self.items[i]
        if item.error is not None:
            return i, None, item.error
        try:
            return i, prepare(item, self.card), None
        except ValueError as exc:
            return i, None, str(exc)


def collate(rows: list[tuple[int, dict[str, Any] | None, str | None]]) -> dict[str, Any]:
    """{"index": the good rows, "inputs": their batch, "errors": [(index, error)]}; text inputs
    stay lists of strings, and an empty text marks that modality absent for the sample, as in
    training (`data/dataset.py`)."""
    good = [(i, inputs) for i, inputs, _ in rows if inputs is not None]
    batch: dict[str, Any] = {"index": [i for i, _ in good], "inputs": {},
                             "errors": [(i, error) for i, _, error in rows if error is not None]}
    if not good:
        return batch
    for name in good[0][1]:
        values = [inputs[name] for _, inputs in good]
        batch["inputs"][name] = torch.stack(values) if torch.is_tensor(values[0]) else values
    texts = {name: values for name, values in batch["inputs"].items() if isinstance(values, list)}
    absent = {name: torch.tensor([not v.strip() for v in values]) for name, values in texts.items()}
    if any(flags.any() for flags in absent.values()):
        batch["inputs"][ABSENT] = absent
    return batch
