"""`sweep.grid` -> variants: every combination of the listed values, each with a readable,
filesystem-safe name built from the keys that change (`objective.preset=kl_bce` ->
`preset-kl_bce`; two keys -> `preset-kl_bce__type-weighted_sum`)."""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import re
from dataclasses import dataclass, field
from typing import Any

from mmdistill.errors import UserError

MAX_VALUE_CHARS = 40
RESERVED = ("report_files",)


@dataclass(frozen=True)
class Variant:
    name: str
    overrides: dict[str, Any] = field(default_factory=dict)  # dotted key -> value, every grid key

    def label(self) -> str:
        return ", ".join(f"{k}={format_value(v)}" for k, v in self.overrides.items()) or "(base config)"


def format_value(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def slug(text: str) -> str:
    """Keep letters, digits, `.`, `+` and `-`; everything else becomes `_`."""
    out = re.sub(r"[^A-Za-z0-9.+\-]+", "_", text).strip("._")
    if len(out) > MAX_VALUE_CHARS:
        out = f"{out[:MAX_VALUE_CHARS - 9]}-{hashlib.sha1(text.encode()).hexdigest()[:8]}"
    return out or "empty"


def short_keys(keys: list[str]) -> dict[str, str]:
    """The shortest dotted suffix of each key that no other key shares:
    objective.preset -> preset; student.fusion.type and teacher.fusion.type stay whole."""
    out = {}
    for key in keys:
        parts = key.split(".")
        for n in range(1, len(parts) + 1):
            suffix = ".".join(parts[-n:])
            if not any(other != key and (other == suffix or other.endswith("." + suffix)) for other in keys):
                break
        out[key] = suffix
    return out


def expand_grid(grid: dict[str, list[Any]]) -> list[Variant]:
    """All combinations, in the order the keys and values are written; the name uses only the
    keys with more than one value (all keys when none varies)."""
    keys = list(grid)
    if not keys:
        return [Variant("default", {})]
    varying = [k for k in keys if len(grid[k]) > 1] or keys
    short = short_keys(varying)
    variants = []
    for values in itertools.product(*(grid[k] for k in keys)):
        overrides = dict(zip(keys, values))
        name = "__".join(f"{slug(short[k])}-{slug(format_value(overrides[k]))}" for k in varying)
        variants.append(Variant(name, overrides))
    return _unique_names(variants)


def _unique_names(variants: list[Variant]) -> list[Variant]:
    counts: dict[str, int] = {}
    for v in variants:
        counts[v.name] = counts.get(v.name, 0) + 1
    out = []
    for v in variants:
        name = v.name
        if counts[name] > 1:  # two values that slug alike (`a/b`, `a_b`): tell them apart by content
            digest = hashlib.sha1(json.dumps(v.overrides, sort_keys=True, default=str).encode()).hexdigest()[:6]
            name = f"{name}-{digest}"
        if name in RESERVED:
            name = f"{name}-variant"
        out.append(Variant(name, v.overrides))
    if len({v.name for v in out}) != len(out):
        dupes = sorted({v.name for v in out if sum(w.name == v.name for w in out) > 1})
        raise UserError(f"sweep.grid: the same value is listed twice (variant {dupes[0]})")
    return out


def set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    """tree[a][b][c] = value for key `a.b.c` (list items by index), creating missing sections."""
    node: Any = tree
    parts = key.split(".")
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        where = ".".join(parts[:i]) or "(top level)"
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise UserError(f"sweep.grid.{key}: {where} is a list; {part!r} is not an index into it")
            if last:
                node[int(part)] = copy.deepcopy(value)
            else:
                node = node[int(part)]
        elif isinstance(node, dict):
            if last:
                node[part] = copy.deepcopy(value)
            else:
                if node.get(part) is None:
                    node[part] = {}
                node = node[part]
        else:
            raise UserError(f"sweep.grid.{key}: {where} is a value ({node!r}), not a section")


def apply_variant(base: dict[str, Any], variant: Variant) -> dict[str, Any]:
    tree = copy.deepcopy(base)
    for key, value in variant.overrides.items():
        set_dotted(tree, key, value)
    return tree
