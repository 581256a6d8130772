"""Plain-text descriptions of every registered loss term and every preset (for `mmdistill losses`)."""

from __future__ import annotations

import inspect
import typing
from typing import Any

from pydantic_core import PydanticUndefined

import mmdistill.losses  # noqa: F401  (registers every term)
from mmdistill.losses.presets import PRESET_NOTES, PRESETS
from mmdistill.losses.terms import TERMS, Term


def _type_name(annotation: Any) -> str:
    if isinstance(annotation, type) and not typing.get_args(annotation):
        return annotation.__name__
    return str(annotation).replace("typing.", "").replace("NoneType", "None")


def _default(field: Any) -> Any:
    if field.default_factory is not None:
        return field.default_factory()
    return None if field.default is PydanticUndefined else field.default


def term_parameters(cls: type[Term]) -> list[tuple[str, str, Any, str]]:
    """(name, type, default, description) of each parameter of term class `cls`."""
    return [(name, _type_name(f.annotation), _default(f), f.description or "")
            for name, f in cls.Params.model_fields.items()]


def term_summary(cls: type[Term]) -> str:
    """The first line of the term's docstring: its paper and formula in one line."""
    doc = inspect.getdoc(cls) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def describe_terms() -> str:
    """Every registered term: name, whether it needs the teacher, its one-line formula, and
    each parameter as `name: type = default`."""
    blocks = []
    for name in TERMS.names():
        cls = TERMS.get(name)
        flags = ["needs teacher" if cls.needs_teacher else "no teacher"]
        if cls.needs_feature_maps:
            flags.append("reads feature maps")
        if cls.needs_dataset_size:
            flags.append("memory bank")
        lines = [f"{name}  ({', '.join(flags)})", f"    {term_summary(cls)}"]
        params = term_parameters(cls)
        if params:
            lines += [f"    {p}: {t} = {d!r}" + (f"  # {why}" if why else "") for p, t, d, why in params]
        else:
            lines.append("    (no parameters)")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def _format_term(entry: dict[str, Any]) -> str:
    params = entry.get("params") or {}
    args = ", ".join(f"{k}={v}" for k, v in params.items())
    return f"{entry.get('weight', 1.0):g} * {entry['term']}" + (f"({args})" if args else "")


PRESET_HELP = """\
`*` in a feature reference (projection:*, embedding:*) means every modality both models read:
the term is repeated per such modality, its weight shared equally (fused vectors when none).
Change a preset's terms by name: objective.overrides: {kd_logits: {params: {temperature: 2}}, task: {weight: 0.3}}
(on the command line: --set objective.overrides.kd_logits.params.temperature=2)"""


def describe_presets() -> str:
    """Every preset: its name, what it is, and its weighted terms; then how to change one."""
    lines = []
    for name, entries in PRESETS.items():
        note = PRESET_NOTES.get(name, "")
        lines.append(f"{name}" + (f"  -- {note}" if note else ""))
        lines.append("    " + " + ".join(_format_term(e) for e in entries))
    return "\n".join(lines) + "\n\n" + PRESET_HELP
