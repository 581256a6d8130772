"""Seed 003's data: a dataset whose teacher embeddings were extracted ahead of time.

    <root>/train_embeddings/{samples.csv, embeddings.npy, meta.json}
    <root>/val_embeddings/...      (our dev split)
    <root>/test_embeddings/...

`samples.csv` lists the samples (image path, labels) in the order of the rows of
`embeddings.npy` ([samples, views, dim]); `meta.json` (written by `mmdistill extract`) records
the seed and augmentation the views were drawn with, because the student must draw the same
views (`data/views.py`) for the embeddings to describe the images it sees.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from mmdistill.config.schema import SPLITS, EmbeddingsSourceSpec, ExperimentConfig
from mmdistill.data.rows import RawSplits
from mmdistill.data.views import view_settings
from mmdistill.data.table import read_split_file
from mmdistill.errors import UserError
from mmdistill.io import write_json_atomic

SPLIT_DIRS = {"train": "train_embeddings", "dev": "val_embeddings", "test": "test_embeddings"}


def split_dir(spec: EmbeddingsSourceSpec, split: str) -> Path:
    return Path(spec.root) / SPLIT_DIRS[split]


def read_embeddings_source(spec: EmbeddingsSourceSpec) -> RawSplits:
    if not Path(spec.root).is_dir():
        raise UserError(f"data.root: directory not found: {spec.root} (default: $DATA_ROOT, else ./data)")
    raw = RawSplits()
    for split in SPLITS:
        path = split_dir(spec, split) / spec.samples_file
        if not path.is_file():
            raise UserError(f"{path}: file not found (expected <root>/{SPLIT_DIRS[split]}/{spec.samples_file})")
        read_split_file(raw, split, path)
    return raw


def teacher_modality(config: ExperimentConfig) -> str:
    """The one teacher modality whose embedding the layout holds (`embedding:<modality>`)."""
    if len(config.teacher.encoders) != 1:
        raise UserError("teacher.encoders: with data.source: embeddings the teacher is one embedding per sample; "
                        f"declare exactly one encoder (the one `mmdistill extract` runs), "
                        f"not {len(config.teacher.encoders)}")
    return next(iter(config.teacher.encoders))


def load_teacher_embeddings(config: ExperimentConfig, sizes: dict[str, int]) -> dict[str, np.ndarray]:
    """{split: [samples, views, dim]} memory-mapped, checked against samples.csv and the config."""
    spec = config.data
    assert isinstance(spec, EmbeddingsSourceSpec)
    out = {}
    for split in SPLITS:
        path = split_dir(spec, split) / spec.embeddings_file
        if not path.is_file():
            raise UserError(f"{path}: file not found; write it with `mmdistill extract CONFIG`")
        try:
            array = np.load(path, mmap_mode="r")
        except (OSError, ValueError) as exc:
            raise UserError(f"{path}: not a readable .npy array ({exc})") from None
        views = spec.num_views if split == "train" else None
        if array.ndim != 3 or array.shape[0] != sizes[split] or (views is not None and array.shape[1] != views):
            want = f"[{sizes[split]}, {views if views is not None else 'views'}, dim]"
            raise UserError(f"{path}: shape {list(array.shape)}, expected {want} "
                            f"({sizes[split]} rows in {SPLIT_DIRS[split]}/{spec.samples_file}"
                            f"{f', data.num_views: {views}' if views is not None else ''})")
        if spec.embedding_dim is not None and array.shape[2] != spec.embedding_dim:
            raise UserError(f"{path}: embedding dim {array.shape[2]}, but data.embedding_dim is {spec.embedding_dim}")
        out[split] = array
    dims = {a.shape[2] for a in out.values()}
    if len(dims) > 1:
        raise UserError(f"{spec.root}: the splits' embeddings differ in size ({sorted(dims)})")
    meta_path = split_dir(spec, "train") / "meta.json"
    if meta_path.is_file() and spec.num_views > 1:
        meta = json.loads(meta_path.read_text())
        if {k: meta.get(k) for k in ("seed", "augment")} != view_settings(config):
            raise UserError(f"{meta_path}: the teacher's views were drawn with seed {meta.get('seed')} and augment "
                            f"{meta.get('augment')}, this config draws them with {view_settings(config)}; the "
                            "student would see other images than the teacher did: re-run `mmdistill extract` "
                            "or match seed and data.augment")
    return out


def write_split_embeddings(directory: Path, array: np.ndarray, meta: dict[str, Any], name: str = "embeddings.npy") -> Path:
    """Atomically: a reader sees the old file or the complete new one, never half of it."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    tmp = directory / f".{name}.tmp"
    with open(tmp, "wb") as fh:
        np.save(fh, array)
    tmp.replace(path)
    write_json_atomic(directory / "meta.json", meta)
    return path
