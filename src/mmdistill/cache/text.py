"""Frozen text encoders' vectors, computed once per (encoder weights, text set) and kept on disk.

A frozen text encoder gives the same vector for the same text; within a process it memoizes
them (models/encoders.py). This keeps them across processes too, as the image cache does for
decoded images: every seed of a sweep, the KD and baseline students and each re-run read the
vectors from `<cache.dir>/text/<key>/` instead of running the language model over the data
again. The key (`keys.text_key`) hashes the encoder's spec, its weights (so a fine-tuned or
reloaded model is a new key) and every distinct text of the run's splits. The store is filled
lazily, on the encoder's first forward, so a model that is built but never run (a checked-only
model, a teacher whose outputs are all cached) costs nothing.

An encoder takes part when it offers `vector_source` (models/encoders.TextEncoder does) and is
frozen; this module reads nothing else of the models, so models can build with it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from tqdm.auto import tqdm

from mmdistill.cache import kind_dir
from mmdistill.cache.keys import text_key
from mmdistill.cache.store import ArrayStore, StoreWriter, open_or_build

if TYPE_CHECKING:
    from mmdistill.config.schema import ExperimentConfig
    from mmdistill.data.dataset import DataBundle


BATCH = 64


@torch.no_grad()
def _build(path: Path, key: str, encoder: Any, texts: list[str], progress: bool) -> ArrayStore:
    path.parent.mkdir(parents=True, exist_ok=True)
    encoder.model.eval()  # frozen encoders are pinned to eval mode already; this keeps it explicit
    with StoreWriter(path, key, {"texts": len(texts)}) as writer:
        writer.declare("vectors", (len(texts), encoder.out_dim), np.float32)
        for start in tqdm(range(0, len(texts), BATCH), desc="caching text vectors", unit="batch",
                          disable=not progress):
            writer.append("vectors", encoder._encode(texts[start:start + BATCH]).float().cpu().numpy())
        return writer.commit()


def _vectors(config: "ExperimentConfig", spec: dict, texts: list[str]):
    def load(encoder: Any) -> dict[str, torch.Tensor]:
        key = text_key(encoder, spec, texts)
        path = kind_dir(config, "text") / key
        store, _ = open_or_build(path, key, lambda: _build(path, key, encoder, texts, config.logging.progress_bar),
                                 "text vector")
        if store is None:  # not writable: the encoder computes and memoizes them itself
            return {}
        vectors = torch.from_numpy(store.read("vectors", np.arange(len(texts))))
        store.close()
        return dict(zip(texts, vectors))

    return load


def attach_text_caches(model: Any, config: "ExperimentConfig", data: "DataBundle", role: str) -> Any:
    """Give each frozen text encoder of `model` (the config's `role`) its on-disk vectors,
    for the distinct texts of every split; `cache.text: false` leaves the in-process memo alone."""
    if not config.cache.text:
        return model
    for name in model.modalities:
        encoder = model.encoders[name]
        if hasattr(encoder, "vector_source") and not encoder.trainable:
            texts = sorted({r.values[name] for ds in data.datasets.values() for r in ds.records
                            if isinstance(r.values[name], str)})
            spec = getattr(config, role).encoders[name].model_dump(mode="json", exclude={"trainable"})
            encoder.vector_source = _vectors(config, spec, texts)
    return model
