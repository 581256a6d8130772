"""Scoring a representation rather than a classifier (seed 003): fit a linear probe and a k-NN
classifier on the train split's embeddings and report their macro F1 on dev and test.

Used for a precomputed teacher (its embeddings are all there is of it) and for the student of
a feature-KD run, so both are scored by the same procedure on the same splits.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from mmdistill.data.dataset import DataBundle
from mmdistill.eval.probe import probe_scores
from mmdistill.models.net import MultiModalNet


@torch.no_grad()
def model_features(model: MultiModalNet, data: DataBundle, split: str, ref: str, batch_size: int) -> np.ndarray:
    """`ref` (`fused`, `embedding:<m>`, `projection:<m>`) for every sample of `split`, unaugmented."""
    model.eval()
    rows = []
    for batch in data.loader(split, batch_size, shuffle=False, seed=0, modalities=set(model.modalities), augment=False):
        rows.append(model(batch["inputs"]).feature(ref).float().cpu().numpy())
    return np.concatenate(rows)


def probe_splits(features: dict[str, np.ndarray], data: DataBundle, seed: int) -> dict[str, Any]:
    """{"dev": M, "test": M}: probes fit on `features["train"]`, scored on dev and test."""
    labels = {split: {t.name: np.asarray(ds.labels[t.name]) for t in data.tasks} for split, ds in data.datasets.items()}
    return {split: probe_scores(features["train"], labels["train"], features[split], labels[split], data.tasks,
                                seed=seed)
            for split in ("dev", "test")}
