"""The files compression writes to `<run_dir>/compressed/`, and loading any of them back as a
predictor (batch inputs -> flat task logits), from the entry results.json keeps for it.

Each entry names its `file` (relative to the run directory), its `format` and its `source`, the
float model it was made from (`fp32`, or `pruned_structured` whose checkpoint records the
channels it kept), which is all a loader needs besides the run's config.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors import safe_open
from safetensors.torch import save_model

from mmdistill.compress import onnx_export, prune_channels, quantize
from mmdistill.compress.measure import Predictor, net_predictor, torch_predictor
from mmdistill.compress.runfiles import LoadedRun, load_checkpoint
from mmdistill.compress.tensor_model import plain_batches, tensor_student, tensors_of
from mmdistill.errors import UserError
from mmdistill.io import atomic_path
from mmdistill.models.build import build_model
from mmdistill.models.net import MultiModalNet

FILES = {
    "pruned_unstructured": "student_pruned_unstructured.safetensors",
    "pruned_structured": "student_pruned_structured.safetensors",
    "int8_dynamic": "student_int8_dynamic.pt",
    "int8_static_fx": "student_int8_static_fx.pt",
    "onnx_fp32": "student_fp32.onnx",
    "onnx_int8_qdq": "student_int8_qdq.onnx",
    "onnx_int8_qoperator": "student_int8_qoperator.onnx",
}
FORMATS = {"int8_dynamic": "torch_int8_dynamic", "int8_static_fx": "torch_int8_static_fx",
           "onnx_fp32": "onnx", "onnx_int8_qdq": "onnx", "onnx_int8_qoperator": "onnx"}


def save_student(model: MultiModalNet, path: Path, plan: dict[str, dict[str, int]] | None = None) -> None:
    """safetensors with the task classes (as every mmdistill checkpoint) and, for a
    channel-pruned student, the channels each conv kept."""
    metadata = {"format": "mmdistill",
                "classes": json.dumps({t.name: list(t.classes) for t in model.tasks}, sort_keys=True)}
    if plan:
        metadata["channels"] = prune_channels.plan_to_metadata(plan)
    with atomic_path(path) as tmp:
        save_model(model, str(tmp), metadata=metadata)


def load_student(run: LoadedRun, path: Path, what: str) -> MultiModalNet:
    """A student checkpoint written by save_student (or the run's own), rebuilt to its shape."""
    if not path.is_file():
        raise UserError(f"{what}: checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as fh:
            channels = (fh.metadata() or {}).get("channels")
    except Exception as exc:
        raise UserError(f"{what}: {path} is not a readable safetensors file ({exc})") from None
    model = build_model(run.config, "student", run.data)
    if channels:
        prune_channels.rebuild(model, prune_channels.plan_from_metadata(channels))
    return load_checkpoint(model, path, what).eval()


def example_inputs(run: LoadedRun) -> tuple:
    batch = next(iter(plain_batches(run.data, "test", 1)))
    return tensors_of(batch["inputs"], list(run.student.modalities))


def source_model(run: LoadedRun, entries: dict[str, Any], source: str) -> MultiModalNet:
    if source == "fp32":
        return run.student
    return load_student(run, run.files.run_dir / entries[source]["file"], f"compressed {source}")


def load_predictor(run: LoadedRun, name: str, entries: dict[str, Any] | None = None, threads: int = 1) -> Predictor:
    """Load the compressed model `name` of a run (as listed in results.json `compressed`)."""
    entries = entries if entries is not None else run.results.get("compressed", {})
    if name not in entries:
        raise UserError(f"{run.files.results}: no compressed model {name!r} (have: {', '.join(entries) or 'none'})")
    entry = entries[name]
    path = run.files.run_dir / entry["file"]
    names = list(run.student.modalities)
    if not path.is_file():
        raise UserError(f"compressed {name}: file not found: {path}")
    fmt = entry["format"]
    if fmt == "safetensors":
        model = run.student if entry["file"] == str(run.files.student.relative_to(run.files.run_dir)) \
            else load_student(run, path, f"compressed {name}")
        if entry.get("runtime") == "torch (MultiModalNet)":
            return net_predictor(model, run.data.tasks)
        return torch_predictor(tensor_student(model), names)
    if fmt == "onnx":
        return onnx_export.predictor(onnx_export.session(path, threads), names)
    if fmt in ("torch_int8_dynamic", "torch_int8_static_fx"):
        float_model = tensor_student(source_model(run, entries, entry["source"]))
        kind = fmt.removeprefix("torch_int8_")
        return torch_predictor(quantize.load(kind, float_model, path, example_inputs(run)), names)
    raise UserError(f"compressed {name}: unknown format {fmt!r}")
