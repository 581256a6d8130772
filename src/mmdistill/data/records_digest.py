"""Fingerprints of the records a run reads: what makes "the same data" for caches and resume.

The caches key their stores on the records the teacher reads; a sweep's resume needs the same
for a whole run, since its config hash alone cannot see a corrected label file or a replaced
image. Values are hashed as read (texts, embeddings, labels); image files by path, size and
mtime (`array_store.file_signature`), not contents, which would cost as much as decoding them.
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any, Iterable

import numpy as np

from mmdistill.data.array_store import file_signature

if TYPE_CHECKING:
    from mmdistill.config.schema import ExperimentConfig
    from mmdistill.data.dataset import DataBundle
    from mmdistill.data.records import Record

IMAGE_KINDS = ("image", "stacked_image")


def hash_value(h: "hashlib._Hash", value: Any) -> None:
    if isinstance(value, np.ndarray):
        h.update(value.tobytes())
    elif isinstance(value, (list, tuple)):
        for v in value:
            hash_value(h, v)
    else:
        h.update(repr(value).encode())


def hash_records(h: "hashlib._Hash", records: Iterable["Record"], kinds: dict[str, str], labels: bool) -> None:
    """Feed `h` the values of the modalities in `kinds` ({modality: kind}) of every record, in
    order, and with `labels` each record's labels."""
    for record in records:
        for m, kind in kinds.items():
            value = record.values[m]
            if kind in IMAGE_KINDS:
                value = [file_signature(p) for p in (value if isinstance(value, (list, tuple)) else [value])]
            hash_value(h, value)
        if labels:
            h.update(json.dumps(record.labels, sort_keys=True, default=str).encode())


def data_signature(config: "ExperimentConfig", data: "DataBundle") -> str:
    """Every record of every split the run read, with labels, plus the precomputed teacher
    embeddings of a feature-KD run: a sweep re-runs a finished run whose signature differs."""
    h = hashlib.sha256(b"data signature 1")
    for split, dataset in data.datasets.items():
        h.update(f"{split}:{len(dataset.records)}".encode())
        kinds = {m: data.modalities[m].kind for m in sorted(dataset.records[0].values)} if dataset.records else {}
        hash_records(h, dataset.records, kinds, labels=True)
    if config.data.source == "embeddings":
        from mmdistill.data.embeddings import SPLIT_DIRS, split_dir

        for split in SPLIT_DIRS:
            hash_value(h, file_signature(split_dir(config.data, split) / config.data.embeddings_file))
    return h.hexdigest()[:24]
