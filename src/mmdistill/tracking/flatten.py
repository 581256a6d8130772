"""What trackers are given: flat name -> value maps made from a config, a metrics.csv row and
results.json, named the way the user already knows them (`training.student.lr`, as `--set`
writes it; `student/test/score`, results.json's path)."""

from __future__ import annotations

import math
from typing import Any

ROW_LABELS = ("stage", "epoch")


def config_params(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """The resolved config as dotted keys; lists and None as text (trackers take scalars)."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(config_params(value, f"{name}."))
        elif isinstance(value, (bool, int, float, str)):
            out[name] = value
        else:
            out[name] = str(value)
    return out


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def row_metrics(row: dict[str, Any]) -> dict[str, float]:
    """A metrics.csv row's numbers (train loss and every loss term, dev scores, lr, seconds);
    a row read back from the file holds them as text."""
    out = {}
    for key, value in row.items():
        number = None if key in ROW_LABELS else _number(value)
        if number is not None:
            out[key] = number
    return out


def result_metrics(results: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Every number in results.json, by its path (`student/test/score`, `compressed/...`);
    lists (per-class values) and text are left out."""
    out: dict[str, float] = {}
    for key, value in results.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(result_metrics(value, f"{name}/"))
        elif isinstance(value, (int, float)):
            number = _number(value)
            if number is not None:
                out[name] = number
    return out
