"""Reading a config file, applying `--set` overrides, and turning validation errors into one
line that names the file and the key path.

Overrides are applied to the raw tree *before* validation, so the schema types them exactly as
if they had been written in the file (`--set training.student.lr=3e-4` becomes a float,
`--set training.baseline=false` a bool) and a bad override is reported like a bad file key.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

import yaml
from pydantic import ValidationError

from mmdistill.config.checks import check_consistency
from mmdistill.config.schema import ExperimentConfig
from mmdistill.errors import UserError


def read_config_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: config file not found")
    text = path.read_text()
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (yaml.YAMLError, json.JSONDecodeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{path}: not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {first}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: the top level must be a mapping of keys, got {type(data).__name__}")
    return data


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b.c=value` -> (["a", "b", "c"], value parsed as a YAML scalar or flow collection)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise UserError(f"--set {text!r}: expected KEY=VALUE, e.g. --set training.student.lr=3e-4")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def apply_overrides(data: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    for text in overrides:
        path, value = parse_override(text)
        node: Any = data
        for i, part in enumerate(path[:-1]):
            if isinstance(node, list):
                node = _list_item(node, part, path[: i + 1], text)
                continue
            if not isinstance(node, dict):
                raise UserError(f"--set {text}: {'.'.join(path[:i])} is not a section")
            node = node.setdefault(part, {})
        last = path[-1]
        if isinstance(node, list):
            node[_list_index(node, last, path, text)] = value
        elif isinstance(node, dict):
            node[last] = value
        else:
            raise UserError(f"--set {text}: {'.'.join(path[:-1])} is not a section")
    return data


def _list_index(node: list, part: str, path: list[str], text: str) -> int:
    if not part.isdigit() or int(part) >= len(node):
        raise UserError(f"--set {text}: {'.'.join(path)}: list index out of range (the list has {len(node)} items)")
    return int(part)


def _list_item(node: list, part: str, path: list[str], text: str) -> Any:
    return node[_list_index(node, part, path, text)]


def _error_path(raw: Any, loc: tuple) -> str:
    """Dotted key path of a pydantic error, without the union tags pydantic inserts."""
    parts: list[str] = []
    node = raw
    for i, part in enumerate(loc):
        last = i == len(loc) - 1
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            node = node[part]
        elif not last:
            continue  # a discriminator tag or validator name, not a key the user wrote
        parts.append(str(part))
    return ".".join(parts) or "(top level)"


def format_validation_error(exc: ValidationError, raw: Any, source: str) -> str:
    # an unknown key is usually a typo that also explains a "missing" one: report it first
    errors = sorted(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")
    first = errors[0]
    key = _error_path(raw, tuple(first["loc"]))
    if first["type"] == "extra_forbidden":
        msg = "unknown key"
    elif first["type"] == "missing":
        msg = "required key is missing"
    else:
        msg = first["msg"].removeprefix("Value error, ")
        if "input" in first and first["type"] not in ("model_type",) and not isinstance(first["input"], (dict, list)):
            msg += f" (got {first['input']!r})"
    more = f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
    return f"{source}: {key}: {msg}{more}"


def validate_config(raw: dict[str, Any], source: str) -> ExperimentConfig:
    """A raw config tree as an ExperimentConfig, checked by the schema and by the checks that
    read the config alone (`checks.py`); raises UserError naming `source` and the key. What
    needs the registries of models and losses too is `mmdistill/preflight.py`."""
    try:
        config = ExperimentConfig.model_validate(raw)
    except ValidationError as exc:
        raise UserError(format_validation_error(exc, raw, source)) from None
    check_consistency(config, source)
    return config
