"""Seed 004's dermatology data: a harmonized metadata CSV from several public datasets,
filtered the way its author did (`datasets`, `min_samples_per_label`, `has_text`,
`data_fraction`), split into train/dev/test by `test_size`/`val_size` stratified by label,
and joined to precomputed text embeddings (parquet, keyed by image id). A case without text
has no embedding: its text modality is absent, which the models mask like seed 004's
modality masking, rather than a zero vector they would read as real."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from mmdistill.config.schema import DermSourceSpec
from mmdistill.data.rows import RawSplits, Row
from mmdistill.data.table import read_rows
from mmdistill.errors import UserError


def _embeddings(path: Path, id_column: str) -> dict[str, list[float]]:
    import pyarrow.parquet as pq

    if not path.is_file():
        raise UserError(f"data.embeddings: file not found: {path}")
    table = pq.read_table(path)
    for column in (id_column, "embedding"):
        if column not in table.column_names:
            raise UserError(f"{path}: missing column {column!r} (columns: {', '.join(table.column_names)})")
    return dict(zip(map(str, table.column(id_column).to_pylist()), table.column("embedding").to_pylist()))


def _has_text(value: Any) -> bool:
    return value is not None and str(value).strip() not in ("", "nan", "None")


def _split(labels: list[str], spec: DermSourceSpec) -> dict[str, list[int]]:
    from sklearn.model_selection import train_test_split

    index = np.arange(len(labels))
    try:
        rest, test = train_test_split(index, test_size=spec.test_size, random_state=spec.split_seed, stratify=labels)
        rest_labels = [labels[i] for i in rest]
        train, dev = train_test_split(rest, test_size=spec.val_size / (1 - spec.test_size), random_state=spec.split_seed,
                                      stratify=rest_labels)
    except ValueError as exc:
        raise UserError(f"data: cannot split {len(labels)} cases by label with test_size {spec.test_size} and "
                        f"val_size {spec.val_size} ({exc}); raise min_samples_per_label") from None
    return {"train": sorted(train), "dev": sorted(dev), "test": sorted(test)}


def read_derm(spec: DermSourceSpec) -> RawSplits:
    root = Path(spec.root)
    path = root / spec.metadata
    if not path.is_file():
        raise UserError(f"data.metadata: file not found: {path}")
    rows: list[Row] = list(read_rows(path))
    for column in (spec.image_column, spec.label_column, spec.dataset_column, spec.id_column):
        if rows and column not in rows[0][1]:
            raise UserError(f"{path}: missing column {column!r} (columns: {', '.join(rows[0][1])})")
    if spec.datasets is not None:
        rows = [r for r in rows if str(r[1][spec.dataset_column]) in spec.datasets]
    if spec.has_text is not None:
        rows = [r for r in rows if _has_text(r[1].get(spec.text_column)) == spec.has_text]
    if spec.data_fraction is not None:
        keep = np.random.default_rng(spec.split_seed).permutation(len(rows))[: max(1, int(len(rows) * spec.data_fraction))]
        rows = [rows[i] for i in sorted(keep)]
    counts = Counter(str(r[1][spec.label_column]) for r in rows)
    rows = [r for r in rows if counts[str(r[1][spec.label_column])] >= spec.min_samples_per_label]
    if not rows:
        raise UserError(f"{path}: no case is left after the filters (datasets, has_text, data_fraction, "
                        f"min_samples_per_label)")
    vectors = _embeddings(root / spec.embeddings, spec.id_column) if spec.embeddings else {}
    dim = len(next(iter(vectors.values()))) if vectors else 0
    enriched = []
    for origin, row in rows:
        text = row.get(spec.text_column)
        vector = vectors.get(str(row[spec.id_column]))
        enriched.append((origin, {**row, "image": row[spec.image_column], "label": row[spec.label_column],
                                  "text": str(text) if _has_text(text) else "",
                                  "text_embedding": vector}))
    raw = RawSplits(embedding_sizes={"text_embedding": dim} if dim else {})
    for split, idx in _split([str(r[1]["label"]) for r in enriched], spec).items():
        raw.rows[split] = [enriched[i] for i in idx]
        raw.files[split] = f"{path} ({split} split, seed {spec.split_seed})"
    return raw
