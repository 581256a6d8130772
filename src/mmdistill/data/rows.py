"""From source rows to records: the part every data source shares.

A source only has to yield `(origin, row)` pairs per split, where a row is a flat dict of
column -> value; mapping columns to modalities and tasks, resolving image paths inside the
data root and checking columns happens here once, with errors naming the origin.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mmdistill.config.schema import SPLITS, ExperimentConfig
from mmdistill.data.records import SplitRecords, TableBuilder
from mmdistill.errors import UserError

Row = tuple[str, dict[str, Any]]


@dataclass
class RawSplits:
    """What a source yields: rows per split, the file each split came from, and (optionally)
    the columns known up front (a CSV header), so a missing column is named once per file."""

    # a list, or an iterator read once (a large file is never held as rows)
    rows: dict[str, Any] = field(default_factory=lambda: {s: [] for s in SPLITS})
    files: dict[str, str] = field(default_factory=dict)
    headers: dict[str, list[str]] = field(default_factory=dict)
    embedding_sizes: dict[str, int] = field(default_factory=dict)  # column -> size, when the source knows it


def _resolve_image(value: Any, image_root: str, origin: str, column: str) -> tuple[str, int, int]:
    """The path the user's table gives (absolute as written, as seed 002's CSV lists
    /path/to/rgb_001.jpg; relative to `image_root`, default `root`, otherwise), with its file's
    size and mtime: the one `stat` of this file in a run, which decides whether its content
    digest must be computed again (`cache/file_digests`)."""
    if not isinstance(value, str) or not value.strip():
        raise UserError(f"{origin}: column {column!r}: empty image path")
    path = os.path.normpath(os.path.join(image_root, os.path.expanduser(value.strip())))
    try:
        st = os.stat(path)
    except OSError:
        st = None
    if st is None or not stat.S_ISREG(st.st_mode):
        raise UserError(f"{origin}: column {column!r}: image not found: {path}")
    return path, st.st_size, st.st_mtime_ns


def _parse_embedding(value: Any, origin: str, column: str) -> np.ndarray | None:
    """The vector, or None where the row has none (an empty cell): that sample's modality is
    then absent, and the models mask it (fusion ignores it) instead of reading a zero vector."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise UserError(f"{origin}: column {column!r}: embedding is not a JSON list of numbers") from None
    try:
        vec = np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError):
        raise UserError(f"{origin}: column {column!r}: embedding is not a list of numbers") from None
    if vec.ndim != 1 or vec.size == 0:
        raise UserError(f"{origin}: column {column!r}: embedding must be a non-empty flat list")
    return vec


def _columns_of(modality: Any) -> list[str]:
    return list(modality.columns) if modality.kind == "stacked_image" else [modality.column]


def records_from_rows(config: ExperimentConfig, raw: RawSplits, file_digests: Any = None) -> SplitRecords:
    """`file_digests(root)` gives the content digests of image files under `root` with the cache's
    memo (`cache.file_digests.FileDigestsMemo`); None reads every image file to hash it."""
    spec = config.data
    root = Path(spec.root)
    image_root = root / spec.image_root if spec.image_root else root
    modalities = {name: m for name, m in spec.modalities.items() if name in config.used_modalities}
    task_columns = {task: (t.column or task) for task, t in config.tasks.items()}
    required = list(dict.fromkeys([c for m in modalities.values() for c in _columns_of(m)] + list(task_columns.values())))
    for path, header in raw.headers.items():
        for column in required:
            if column not in header:
                raise UserError(f"{path}: missing column {column!r} (columns: {', '.join(header)})")
    kinds = {name: m.kind for name, m in modalities.items()}
    parts = {name: len(m.columns) for name, m in modalities.items() if m.kind == "stacked_image"}
    out = SplitRecords(splits={}, files=dict(raw.files), embedding_sizes=dict(raw.embedding_sizes))
    images = str(image_root.absolute())
    content = file_digests(images) if file_digests is not None else None
    for split in SPLITS:
        table = TableBuilder(kinds, parts, task_columns)
        for origin, row in raw.rows[split]:
            for column in required:
                if column not in row:
                    raise UserError(f"{origin}: missing column {column!r}")
            values: dict[str, Any] = {}
            stats: dict[str, list[tuple[int, int]]] = {}
            for name, modality in modalities.items():
                if modality.kind == "image":
                    path, size, mtime = _resolve_image(row[modality.column], images, origin, modality.column)
                    values[name], stats[name] = path, [(size, mtime)]
                elif modality.kind == "stacked_image":
                    resolved = [_resolve_image(row[c], images, origin, c) for c in modality.columns]
                    values[name], stats[name] = tuple(r[0] for r in resolved), [r[1:] for r in resolved]
                elif modality.kind == "embedding":
                    values[name] = _parse_embedding(row[modality.column], origin, modality.column)
                else:
                    values[name] = "" if row[modality.column] is None else str(row[modality.column])
            table.add(origin, values, {task: row[col] for task, col in task_columns.items()}, stats)
        if not len(table):
            raise UserError(f"{raw.files.get(split, split)}: the {split} split is empty")
        out.splits[split] = table.build(content)
    if content is not None:
        content.done_reading()
    out.file_digests = content
    return out
