"""What `mmdistill predict` reads: a table (CSV, JSONL or parquet) with the columns the model
reads and, optionally, its label columns; a folder of images (searched recursively); or one
image. Each becomes an `Item`: its id (the image path, or `file line N`), the raw value per
model input, its labels when the table has them, and the error that makes it unpredictable.

A row that cannot be used (an image file that is missing, an empty cell) keeps its place with
its error, so the output has one row per input; a table that lacks a column the model reads
is a bad input as a whole (exit 2, naming the column).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmdistill.data.table import read_rows, table_columns
from mmdistill.errors import UserError
from mmdistill.models.card import ModelCard

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif"}
TABLE_SUFFIXES = {".csv", ".jsonl", ".ndjson", ".parquet"}


@dataclass
class Item:
    id: str
    values: dict[str, Any]
    labels: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


def read_input(path: str | Path, card: ModelCard, image_root: str | Path | None = None) -> tuple[list[Item], bool]:
    """(items, whether the input has every task's label column)."""
    path = Path(path)
    if path.is_dir():
        return _images(sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES), card, path), False
    if not path.exists():
        raise UserError(f"{path}: input not found (a table, a folder of images or an image)")
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return _images([path], card, path), False
    if path.suffix.lower() in TABLE_SUFFIXES:
        return _table(path, card, Path(image_root) if image_root else path.parent)
    raise UserError(f"{path}: not a table ({', '.join(sorted(TABLE_SUFFIXES))}), an image or a folder")


def image_only_input(card: ModelCard, source: Path) -> str:
    """The one image input of a model that reads nothing else (what a folder or an image can feed)."""
    if len(card.inputs) != 1 or card.inputs[0].kind != "image":
        reads = ", ".join(f"{i.name} ({i.kind})" for i in card.inputs)
        raise UserError(f"{source}: images alone can feed only a model that reads one image; this one reads {reads}: "
                        "give a table with those columns")
    return card.inputs[0].name


def _images(paths: list[Path], card: ModelCard, source: Path) -> list[Item]:
    name = image_only_input(card, source)
    if not paths:
        raise UserError(f"{source}: no image files in it ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return [Item(id=str(p), values={name: p}) for p in paths]


def _table(path: Path, card: ModelCard, image_root: Path) -> tuple[list[Item], bool]:
    needed = [c for i in card.inputs for c in i.columns]
    header = table_columns(path)
    if header is not None:  # CSV / parquet: checked before a row is read
        _require(path, needed, header)
    label_columns = {t.name: t.column or t.name for t in card.tasks}
    items: list[Item] = []
    seen: set[str] = set()          # columns any row has
    common: set[str] | None = None  # columns every row has
    for origin, row in read_rows(path):
        item = Item(id=origin, values={})
        absent = [c for c in needed if c not in row]
        if absent:
            item.error = f"missing column {absent[0]!r}"
        else:
            for spec in card.inputs:
                value = [row[c] for c in spec.columns] if spec.kind == "stacked_image" else row[spec.columns[0]]
                item.values[spec.name] = _resolve(value, spec.kind, image_root)
        item.labels = {task: row[column] for task, column in label_columns.items() if column in row}
        seen.update(row)
        common = set(row) if common is None else common & set(row)
        items.append(item)
    if not items:
        raise UserError(f"{path}: no rows")
    if header is None:  # JSONL has no header: a column that no row has is the table's fault, not one row's
        _require(path, needed, sorted(seen))
    return items, all(c in common for c in label_columns.values())  # labels only where every row has them


def _require(path: Path, needed: list[str], columns: list[str]) -> None:
    """Exit 2 naming the columns the model reads that the table lacks."""
    missing = [c for c in needed if c not in columns]
    if missing:
        raise UserError(f"{path}: missing column{'s' if len(missing) > 1 else ''} {', '.join(map(repr, missing))} "
                        f"that the model reads (columns: {', '.join(columns)})")


def _resolve(value: Any, kind: str, image_root: Path) -> Any:
    """Image paths of the table as the run read them: absolute as written, relative to the
    image root (the table's folder unless --image-root says otherwise)."""
    if kind == "image":
        return _path(value, image_root)
    if kind == "stacked_image":
        return [_path(v, image_root) for v in value]
    return value


def _path(value: Any, image_root: Path) -> Path | None:
    if value is None or not str(value).strip():
        return None
    given = Path(str(value).strip()).expanduser()
    return given if given.is_absolute() else image_root / given
