"""A teacher that exists only as embeddings extracted ahead of time (seed 003, `data.source:
embeddings`): it stands in for a teacher model in the KD student stage, answering
`embedding:<modality>` for the batch's (sample, view) pairs, and never needs the teacher's
weights."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from mmdistill.errors import UserError
from mmdistill.models.net import ModelOutput


def sample_views(batch: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, torch.device]:
    """The batch's sample indices and views (view 0 without one), and the device it is on."""
    index = batch["index"].cpu().numpy().astype(np.int64)
    view = batch["view"].cpu().numpy().astype(np.int64) if "view" in batch else np.zeros_like(index)
    return index, view, next(iter(batch["labels"].values())).device


class PrecomputedTeacher(nn.Module):
    """`splits`: {split: [samples, views, dim]} extracted embeddings; the student stage reads
    `split` (train; dev for the dev loss). For building the objective it also answers the size
    of that embedding."""

    def __init__(self, splits: dict[str, np.ndarray], modality: str, split: str = "train"):
        super().__init__()
        self.splits = splits
        self.modality = modality
        self.split = split
        self.want_feature_maps: set[str] = set()

    def for_split(self, split: str) -> "PrecomputedTeacher":
        """The same teacher answering for batches of `split` (dev and test hold one view)."""
        return PrecomputedTeacher(self.splits, self.modality, split)

    def feature_dim(self, ref: str) -> int:
        if ref != f"embedding:{self.modality}":
            raise UserError(f"the teacher is precomputed embeddings (data.source: embeddings); terms can read only "
                            f"teacher: embedding:{self.modality}, not {ref!r}")
        return int(self.splits["train"].shape[-1])

    def has_feature_map(self, modality: str) -> bool:
        return False

    def forward(self, batch: dict[str, Any]) -> ModelOutput:
        index, view, device = sample_views(batch)
        rows = torch.from_numpy(np.asarray(self.splits[self.split][index, view], dtype=np.float32)).to(device)
        return ModelOutput(logits={}, embeddings={self.modality: rows})
