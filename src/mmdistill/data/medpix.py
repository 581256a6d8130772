"""MedPix 2.0 (seeds 000/001): clinical cases and per-image descriptions, joined on `U_id`.

The published layout is kept as it is, so the dataset folder from the MedPix-2.0 repository
works unchanged. Each image becomes one row: `image` (its path), `text` (the configured
fields of its description and of its case, joined), and the description's fields flattened
with dots (`Type`, `Location Category`, `Description.Modality`, ...) for tasks to name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mmdistill.config.schema import SPLITS, MedPixSourceSpec
from mmdistill.data.rows import RawSplits, Row
from mmdistill.data.table import read_rows
from mmdistill.errors import UserError


def _jsonl(path: Path) -> list[tuple[str, dict[str, Any]]]:
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    return list(read_rows(path))


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def _text(fields: list[str], description: dict[str, Any], case: dict[str, Any], sep: str) -> str:
    parts = []
    for field in fields:
        value = description.get(field, case.get(field))
        if value not in (None, "", []):
            parts.append(" ".join(str(value).split()))
    return sep.join(parts)


def read_medpix(spec: MedPixSourceSpec) -> RawSplits:
    root = Path(spec.root)
    if not root.is_dir():
        raise UserError(f"data.root: directory not found: {root}")
    raw = RawSplits()
    for split in SPLITS:
        suffix = spec.split_files[split]
        cases_path = root / spec.dataset_dir / f"data_{suffix}.jsonl"
        desc_path = root / spec.dataset_dir / f"descriptions_{suffix}.jsonl"
        cases: dict[str, dict[str, Any]] = {}
        for origin, case in _jsonl(cases_path):
            if "U_id" not in case:
                raise UserError(f"{origin}: missing field 'U_id'")
            cases[str(case["U_id"])] = _flatten({k: v for k, v in case.items() if k not in ("TAC", "MRI")})
        rows: list[Row] = []
        for origin, desc in _jsonl(desc_path):
            for key in ("U_id", "image"):
                if key not in desc:
                    raise UserError(f"{origin}: missing field {key!r}")
            case = cases.get(str(desc["U_id"]))
            if case is None:
                raise UserError(f"{origin}: U_id {desc['U_id']!r} has no case in {cases_path}")
            flat = _flatten(desc)
            row = {**flat, "image": f"{spec.image_dir}/{desc['image']}{spec.image_ext}",
                   "text": _text(spec.text_fields, flat, case, spec.text_separator)}
            rows.append((origin, row))
        raw.rows[split] = rows
        raw.files[split] = str(desc_path)
    return raw
