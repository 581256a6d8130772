"""Model weights as safetensors, with the task classes stored in the file's metadata so a
checkpoint is never silently loaded against a dataset whose class order differs."""

from __future__ import annotations

import json
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import load_model, save_model

from mmdistill.errors import UserError
from mmdistill.io import atomic_path
from mmdistill.models.net import MultiModalNet


def _classes(model: MultiModalNet) -> str:
    return json.dumps({t.name: list(t.classes) for t in model.tasks}, sort_keys=True)


def save_weights(model: MultiModalNet, path: Path) -> None:
    with atomic_path(path) as tmp:
        save_model(model, str(tmp), metadata={"format": "mmdistill", "classes": _classes(model)})


def load_weights(model: MultiModalNet, path: Path, key: str) -> None:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{key}: checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as fh:
            metadata = fh.metadata() or {}
    except Exception as exc:  # safetensors raises its own error types for corrupt headers
        raise UserError(f"{key}: {path} is not a readable safetensors file ({exc})") from None
    if "classes" in metadata and metadata["classes"] != _classes(model):
        raise UserError(f"{key}: {path} was trained on classes {metadata['classes']}, "
                        f"but this data has {_classes(model)}")
    try:
        missing, unexpected = load_model(model, str(path), strict=False)
    except RuntimeError as exc:
        raise UserError(f"{key}: {path} does not fit this model ({str(exc).splitlines()[0]})") from None
    if missing or unexpected:
        names = (list(missing) + list(unexpected))[:3]
        raise UserError(f"{key}: {path} does not fit this model (mismatched weights: {', '.join(names)} ...)")
