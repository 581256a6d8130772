"""The generic `table` source: CSV, JSONL or parquet, one file per split or one file with a
split column; columns are mapped to modalities and tasks by the config.

Everything is read as it is in the file (CSV cells stay strings); origins name the file and
the line the user sees in an editor (CSV line numbers count the header).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from mmdistill.config.schema import SPLITS, TableSourceSpec
from mmdistill.data.rows import RawSplits
from mmdistill.errors import UserError


def read_rows(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """(origin, row) pairs; origin is `file line N` (CSV/JSONL) or `file row N` (parquet)."""
    suffix = path.suffix.lower()
    if suffix == ".csv":
        with path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            for row in reader:
                yield f"{path} line {reader.line_num}", row
    elif suffix in (".jsonl", ".ndjson"):
        with path.open(encoding="utf-8") as fh:
            for n, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise UserError(f"{path} line {n}: malformed JSON ({exc.msg})") from None
                if not isinstance(row, dict):
                    raise UserError(f"{path} line {n}: expected a JSON object, got {type(row).__name__}")
                yield f"{path} line {n}", row
    elif suffix == ".parquet":
        import pyarrow.parquet as pq

        for n, row in enumerate(pq.read_table(path).to_pylist()):
            yield f"{path} row {n}", row
    else:
        raise UserError(f"{path}: unsupported table format {suffix!r}; use .csv, .jsonl or .parquet")


def table_columns(path: Path) -> list[str] | None:
    """Header of a CSV or schema of a parquet file (JSONL rows may differ; checked per row).
    Public: `mmdistill predict` checks its input table's columns the same way."""
    if path.suffix.lower() == ".csv":
        with path.open(newline="", encoding="utf-8-sig") as fh:
            return next(csv.reader(fh), [])
    if path.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        return list(pq.read_schema(path).names)
    return None


def read_split_file(raw: RawSplits, split: str, path: Path) -> None:
    """All rows of `path` become split `split`, with its header kept to name missing columns.
    The rows are an iterator: at a million rows, a list of row dicts would cost more memory than
    everything the run keeps of them (`data/records.py`)."""
    raw.files[split] = str(path)
    header = table_columns(path)
    if header is not None:
        raw.headers[str(path)] = header
    raw.rows[split] = read_rows(path)  # read as the records are built, never held as rows


def read_table(spec: TableSourceSpec) -> RawSplits:
    root = Path(spec.root)
    if not root.is_dir():
        raise UserError(f"data.root: directory not found: {root}")
    raw = RawSplits()
    if spec.files is not None:
        for split in SPLITS:
            path = root / spec.files[split]
            if not path.is_file():
                raise UserError(f"data.files.{split}: file not found: {path}")
            read_split_file(raw, split, path)
        return raw
    path = root / spec.file  # type: ignore[operator]
    if not path.is_file():
        raise UserError(f"data.file: file not found: {path}")
    rows = list(read_rows(path))
    header = table_columns(path)
    has_split = any(spec.split_column in row for _, row in rows[:1]) if header is None else spec.split_column in header
    if header is not None:
        raw.headers[str(path)] = header
    if has_split:
        wanted = {v: k for k, v in spec.split_values.items()}
        for origin, row in rows:
            if spec.split_column not in row:
                raise UserError(f"{origin}: missing column {spec.split_column!r}")
            split = wanted.get(str(row[spec.split_column]))
            if split is not None:
                raw.rows[split].append((origin, row))
        for split in SPLITS:
            raw.files[split] = f"{path} ({spec.split_column} == {spec.split_values[split]!r})"
        return raw
    if spec.split_ratios is None:
        raise UserError(f"{path}: missing column {spec.split_column!r}; add it, or set data.split_ratios "
                        "to split at random")
    order = np.random.default_rng(spec.split_seed).permutation(len(rows))
    n_train = int(round(spec.split_ratios[0] * len(rows)))
    n_dev = int(round(spec.split_ratios[1] * len(rows)))
    parts = {"train": order[:n_train], "dev": order[n_train:n_train + n_dev], "test": order[n_train + n_dev:]}
    for split, idx in parts.items():
        raw.rows[split] = [rows[i] for i in sorted(idx)]
        raw.files[split] = f"{path} (random {split} split, seed {spec.split_seed})"
    return raw
