"""Frozen text encoders' vectors, computed once per (encoder weights, text set) and kept on disk.

A frozen text encoder gives the same vector for the same text; within a process it memoizes
them (models/encoders.py). This keeps them across processes too, as the image cache does for
decoded images: every seed of a sweep, the KD and baseline students and each re-run read the
vectors from `<cache.dir>/text/<key>/` instead of running the language model over the data
again. The key hashes the encoder's spec, its weights (so a fine-tuned or reloaded model is a
new key) and every distinct text of the run's splits. The store is filled lazily, on the
encoder's first forward, so a model that is built but never run (a checked-only model, a
teacher whose outputs are all cached) costs nothing.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from mmdistill.config.schema import ExperimentConfig
from mmdistill.data.array_store import ArrayStore, StoreWriter, open_or_build
from mmdistill.data.dataset import DataBundle
from mmdistill.models.encoders import TextEncoder
from mmdistill.models.net import MultiModalNet
from mmdistill.train.teacher_cache import weights_digest


BATCH = 64


def text_cache_key(encoder: TextEncoder, spec: dict, texts: list[str]) -> str:
    h = hashlib.sha256()
    h.update(json.dumps({"format": 1, "spec": spec, "texts": len(texts)}, sort_keys=True, default=str).encode())
    h.update(weights_digest(encoder.model).encode())
    for text in texts:
        h.update(text.encode())
        h.update(b"\0")
    return h.hexdigest()[:24]


@torch.no_grad()
def _build(path: Path, key: str, encoder: TextEncoder, texts: list[str], progress: bool) -> ArrayStore:
    path.parent.mkdir(parents=True, exist_ok=True)
    encoder.model.eval()  # frozen encoders are pinned to eval mode already; this keeps it explicit
    with StoreWriter(path, key, {"texts": len(texts)}) as writer:
        writer.declare("vectors", (len(texts), encoder.out_dim), np.float32)
        for start in tqdm(range(0, len(texts), BATCH), desc="caching text vectors", unit="batch",
                          disable=not progress):
            writer.append("vectors", encoder._encode(texts[start:start + BATCH]).float().cpu().numpy())
        return writer.commit()


def _vectors(config: ExperimentConfig, spec: dict, texts: list[str]):
    def load(encoder: TextEncoder) -> dict[str, torch.Tensor]:
        key = text_cache_key(encoder, spec, texts)
        path = config.cache_dir / "text" / key
        store, _ = open_or_build(path, key, lambda: _build(path, key, encoder, texts, config.logging.progress_bar),
                                 "text vector")
        if store is None:  # not writable: the encoder computes and memoizes them itself
            return {}
        vectors = torch.from_numpy(store.read("vectors", np.arange(len(texts))))
        store.close()
        return dict(zip(texts, vectors))

    return load


def attach_text_caches(model: MultiModalNet, config: ExperimentConfig, data: DataBundle, role: str) -> MultiModalNet:
    """Give each frozen text encoder of `model` (the config's `role`) its on-disk vectors,
    for the distinct texts of every split; `cache.text: false` leaves the in-process memo alone."""
    if not config.cache.text:
        return model
    for name in model.modalities:
        encoder = model.encoders[name]
        if isinstance(encoder, TextEncoder) and not encoder.trainable:
            texts = sorted({r.values[name] for ds in data.datasets.values() for r in ds.records
                            if isinstance(r.values[name], str)})
            spec = getattr(config, role).encoders[name].model_dump(mode="json", exclude={"trainable"})
            encoder.vector_source = _vectors(config, spec, texts)
    return model
