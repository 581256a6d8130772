"""The generic `table` source: CSV, JSONL or parquet, one file per split or one file with a
split column; columns are mapped to modalities and tasks by the config.

Everything is read as it is in the file (CSV cells stay strings) and checked here, so an error
names the file and the line the user sees in an editor (CSV line numbers count the header).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from mmdistill.config.schema import SPLITS, ExperimentConfig, TableSourceSpec
from mmdistill.data.records import Record, SplitRecords
from mmdistill.errors import UserError


def _rows(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
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


def _columns(path: Path) -> list[str] | None:
    """Header of a CSV or schema of a parquet file (JSONL rows may differ; checked per row)."""
    if path.suffix.lower() == ".csv":
        with path.open(newline="", encoding="utf-8-sig") as fh:
            return next(csv.reader(fh), [])
    if path.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        return list(pq.read_schema(path).names)
    return None


def _resolve_image(value: Any, image_root: Path, origin: str, column: str) -> Path:
    if not isinstance(value, str) or not value.strip():
        raise UserError(f"{origin}: column {column!r}: empty image path")
    root = image_root.resolve()
    path = (image_root / value).resolve()
    if root != path and root not in path.parents:
        raise UserError(f"{origin}: column {column!r}: image path {value!r} escapes the data root {image_root}")
    if not path.is_file():
        raise UserError(f"{origin}: column {column!r}: image not found: {image_root / value}")
    return path


def _parse_embedding(value: Any, origin: str, column: str) -> np.ndarray:
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


def read_table(config: ExperimentConfig) -> SplitRecords:
    spec: TableSourceSpec = config.data  # type: ignore[assignment]
    root = Path(spec.root)
    if not root.is_dir():
        raise UserError(f"data.root: directory not found: {root}")
    image_root = root / spec.image_root if spec.image_root else root
    needed = {m.column: name for name, m in spec.modalities.items()}
    task_columns = {task: (t.column or task) for task, t in config.tasks.items()}

    if spec.files is not None:
        files = {split: root / spec.files[split] for split in SPLITS}
    else:
        files = {split: root / spec.file for split in SPLITS}  # type: ignore[operator]
    for split, path in files.items():
        if not path.is_file():
            raise UserError(f"data.files.{split}: file not found: {path}" if spec.files else f"data.file: file not found: {path}")

    out = SplitRecords(splits={s: [] for s in SPLITS}, files={s: str(p) for s, p in files.items()})
    wanted_split = {v: k for k, v in spec.split_values.items()}
    for path in dict.fromkeys(files.values()):
        header = _columns(path)
        required = list(needed) + list(task_columns.values()) + ([spec.split_column] if spec.file else [])
        if header is not None:
            for column in required:
                if column not in header:
                    raise UserError(f"{path}: missing column {column!r} (columns: {', '.join(header)})")
        for origin, row in _rows(path):
            for column in required:
                if column not in row:
                    raise UserError(f"{origin}: missing column {column!r}")
            if spec.file:
                split = wanted_split.get(str(row[spec.split_column]))
                if split is None:
                    continue
            else:
                split = next(s for s, p in files.items() if p == path)
            values: dict[str, Any] = {}
            for column, modality in needed.items():
                kind = spec.modalities[modality].kind
                if kind == "image":
                    values[modality] = _resolve_image(row[column], image_root, origin, column)
                elif kind == "embedding":
                    values[modality] = _parse_embedding(row[column], origin, column)
                else:
                    values[modality] = "" if row[column] is None else str(row[column])
            labels = {task: row[col] for task, col in task_columns.items()}
            out.splits[split].append(Record(origin=origin, values=values, labels=labels))
    for split in SPLITS:
        if not out.splits[split]:
            where = files[split] if spec.files else f"{files[split]} ({spec.split_column} == {spec.split_values[split]!r})"
            raise UserError(f"{where}: the {split} split is empty")
    return out
