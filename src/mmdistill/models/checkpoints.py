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
        # force_contiguous: a channels-last model (training.channels_last) has non-contiguous conv weights
        save_model(model, str(tmp), metadata={"format": "mmdistill", "classes": _classes(model)}, force_contiguous=True)


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


def load_start_weights(model: MultiModalNet, path: Path, key: str) -> None:
    """Start a stage from earlier weights (`training.<stage>.load_from`, seed 004's load_from):
    an mmdistill safetensors checkpoint (`<stage>_best.safetensors`), or a periodic Lightning
    checkpoint (`.ckpt`, of which only the model's weights are taken: the optimizer, schedule
    and epoch count start afresh, which is what tells this apart from `resume_from`)."""
    path = Path(path)
    if path.suffix != ".ckpt":
        load_weights(model, path, key)
        return
    import torch

    if not path.is_file():
        raise UserError(f"{key}: checkpoint not found: {path}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        state = {k.removeprefix("model."): v for k, v in checkpoint["state_dict"].items() if k.startswith("model.")}
    except Exception as exc:  # a damaged file, or not a Lightning checkpoint
        raise UserError(f"{key}: {path} is not a readable Lightning checkpoint ({exc})") from None
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # a tensor of another shape
        raise UserError(f"{key}: {path} does not fit this model ({str(exc).splitlines()[0]})") from None
    if missing or unexpected:
        names = (list(missing) + list(unexpected))[:3]
        raise UserError(f"{key}: {path} does not fit this model (mismatched weights: {', '.join(names)} ...)")
