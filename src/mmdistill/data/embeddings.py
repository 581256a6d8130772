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
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np

from mmdistill.config.schema import SPLITS, EmbeddingsSourceSpec, ExperimentConfig
from mmdistill.data.rows import RawSplits
from mmdistill.data.views import view_settings
from mmdistill.data.table import read_split_file
from mmdistill.errors import UserError
from mmdistill.io import atomic_path, write_json_atomic

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
    with atomic_path(directory / name) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, array)
    write_json_atomic(directory / "meta.json", meta)
    return directory / name


class SplitEmbeddingsWriter:
    """One split's [samples, views, dim] float32 embeddings written batch by batch, for a pass
    too large to hold in memory (`mmdistill extract`): rows go straight to their [sample, view]
    place in a .npy preallocated beside the final file (a temporary sibling, mapped into memory,
    so a batch costs its own rows and the file's pages are the kernel's to write back).

    `commit(meta)` checks that every (sample, view) was written, renames the file over `name`
    and then writes meta.json, as `write_split_embeddings` does; leaving the `with` block
    without it (an exception, an interrupt) removes the temporary file, so a reader finds the
    old complete file or none, never a partial one. The array is allocated at the first
    `write`, once the embedding size is known.

        with SplitEmbeddingsWriter(directory, samples, views) as out:
            for ...: out.write(index, view, rows)
            out.commit(meta)
    """

    def __init__(self, directory: Path, samples: int, views: int, name: str = "embeddings.npy"):
        self.directory = Path(directory)
        self.path = self.directory / name
        self.samples, self.views = samples, views
        self.dim: int | None = None
        self._array: np.memmap | None = None
        self._written = np.zeros((samples, views), dtype=bool)
        self._committed = False

    def __enter__(self) -> "SplitEmbeddingsWriter":
        self._stack = ExitStack()
        self.tmp = self._stack.enter_context(atomic_path(self.path))
        self._stack.callback(self._close)  # unmapped before the file is renamed or removed
        return self

    def write(self, index: Any, view: Any, rows: np.ndarray) -> None:
        """rows[j] is the embedding of sample index[j] at view view[j] (one view or one per row)."""
        index, view = np.asarray(index, dtype=np.int64), np.asarray(view, dtype=np.int64)
        if self._array is None:
            self.dim = int(rows.shape[-1])
            self._array = np.lib.format.open_memmap(self.tmp, mode="w+", dtype=np.float32,
                                                    shape=(self.samples, self.views, self.dim))
        self._array[index, view] = rows
        self._written[index, view] = True

    def commit(self, meta: dict[str, Any]) -> Path:
        if self._array is None:
            raise ValueError(f"{self.path}: no embeddings were written ({self.samples} samples)")
        if not self._written.all():
            missing = np.argwhere(~self._written)
            raise ValueError(f"{self.path}: {len(missing)} of {self._written.size} (sample, view) rows never "
                             f"written, e.g. {tuple(int(x) for x in missing[0])}")
        self._array.flush()
        self._stack.close()  # unmap, then rename over `name`
        self._committed = True
        write_json_atomic(self.directory / "meta.json", meta)
        return self.path

    def _close(self) -> None:
        self._array = None  # the only reference to the mapping: dropping it unmaps the file

    def __exit__(self, exc_type, exc, tb) -> bool:
        if self._committed:
            return False
        if exc_type is not None:
            return bool(self._stack.__exit__(exc_type, exc, tb))  # removes the temporary file
        error = RuntimeError(f"{self.path}: the embeddings writer was left without commit()")
        self._stack.__exit__(RuntimeError, error, None)
        raise error
