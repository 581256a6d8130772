"""A trained or compressed model ready to apply: `load(source, model)`.

`source` is a run directory (config.yaml, results.json, checkpoints/, compressed/) or a bare
`.onnx` file written by `compress`, which carries its model card (`models/card.py`). `model`
names what to load from a run:

    fp32      the best student checkpoint (the default when nothing is compressed)
    best      the default int8 model `compress` chose (the default when there is one)
    teacher   the run's teacher (it must read only what the input provides)
    <name>    any entry of results.json `compressed` (int8_static_fx, onnx_int8_qdq, ...)

Every model answers the same way: a batch of prepared inputs in, the tasks' logits side by
side out (the card's `logits` layout), on the CPU.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from mmdistill.errors import UserError
from mmdistill.models.card import METADATA_KEY, ModelCard, card_for
from mmdistill.predict.inputs import Item, image_only_input
from mmdistill.predict.preprocess import collate, prepare

Backend = Callable[[dict[str, Any]], torch.Tensor]  # batch inputs -> [B, total task outputs]


@dataclass
class DeployedModel:
    """A model and the card that says how to feed it and read its output."""

    card: ModelCard
    name: str
    backend: Backend

    @property
    def classes(self) -> dict[str, list[str]]:
        """Each task's classes, in the order of its probability columns."""
        return {t.name: list(t.classes) for t in self.card.tasks}

    @torch.no_grad()
    def logits(self, inputs: dict[str, Any]) -> torch.Tensor:
        return self.backend(inputs)

    def probabilities(self, logits: torch.Tensor) -> dict[str, np.ndarray]:
        """{task: [B] positive probability (binary) or [B, classes] (multiclass)}."""
        out, start = {}, 0
        for task in self.card.tasks:
            part = logits[:, start:start + task.width].float()
            out[task.name] = (torch.sigmoid(part[:, 0]) if task.type == "binary" else torch.softmax(part, -1)).numpy()
            start += task.width
        return out

    def predict(self, inputs: Any, batch_size: int = 32) -> dict[str, np.ndarray]:
        """Per-task probabilities of `inputs`: image paths or PIL images (a model that reads one
        image), or records {column: value} with the columns the model reads; one or a list.
        A bad input raises, naming it (`mmdistill predict` reports it per row instead)."""
        many = inputs if isinstance(inputs, (list, tuple)) else [inputs]
        items = [_item(value, self.card) for value in many]
        parts: list[dict[str, np.ndarray]] = []
        for start in range(0, len(items), batch_size):
            chunk = items[start:start + batch_size]
            rows = []
            for i, item in enumerate(chunk):
                try:
                    rows.append((i, prepare(item, self.card), None))
                except ValueError as exc:
                    raise UserError(f"input {start + i} ({item.id}): {exc}") from None
            parts.append(self.probabilities(self.logits(collate(rows)["inputs"])))
        return {t: np.concatenate([p[t] for p in parts]) for t in self.classes}


def _item(value: Any, card: ModelCard) -> Item:
    """An API input as an item: a record {column: value}, or an image (path or PIL image)."""
    if isinstance(value, dict):
        missing = [c for spec in card.inputs for c in spec.columns if c not in value]
        if missing:
            raise UserError(f"input record lacks column {missing[0]!r} (the model reads "
                            f"{', '.join(c for spec in card.inputs for c in spec.columns)})")
        values = {spec.name: ([value[c] for c in spec.columns] if spec.kind == "stacked_image"
                              else value[spec.columns[0]]) for spec in card.inputs}
        return Item(id=str(value), values=values)
    name = image_only_input(card, Path("(inputs)"))
    return Item(id=str(getattr(value, "filename", None) or value), values={name: value})


# --------------------------------------------------------------------------- loading


def load(source: str | Path, model: str | None = None, threads: int | None = None) -> DeployedModel:
    """The model `model` of a run directory, or a bare ONNX file (see the module docstring)."""
    path = Path(source)
    if path.suffix == ".onnx":
        if model not in (None, "onnx"):
            raise UserError(f"{path}: a bare ONNX file is one model; --model does not apply")
        return _onnx_file(path, threads)
    return RunModels(path).load(model, threads)


def _onnx_file(path: Path, threads: int | None) -> DeployedModel:
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    import onnx

    try:
        meta = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
        card = ModelCard.from_json(meta[METADATA_KEY])
    except KeyError:
        raise UserError(f"{path}: carries no mmdistill model card (metadata '{METADATA_KEY}'); "
                        "predict from its run directory instead") from None
    except Exception as exc:  # a damaged file or card
        raise UserError(f"{path}: not a readable mmdistill ONNX model ({exc})") from None
    return DeployedModel(card, path.name, _onnx_backend(path, card.input_names, threads))


def _onnx_backend(path: Path, names: list[str], threads: int | None) -> Backend:
    from mmdistill.compress.onnx_export import session

    sess = session(path, threads or 1)

    def run(inputs: dict[str, Any]) -> torch.Tensor:
        return torch.from_numpy(sess.run(["logits"], {n: inputs[n].numpy() for n in names})[0])

    return run


def net_backend(net: torch.nn.Module) -> Backend:
    """A MultiModalNet (any modalities, text included) as logits side by side."""
    net.eval()

    def run(inputs: dict[str, Any]) -> torch.Tensor:
        out = net(inputs)
        return torch.cat([out.logits[t.name].unsqueeze(-1) if t.type == "binary" else out.logits[t.name]
                          for t in net.tasks], dim=-1)

    return run


def applying_config(raw: dict[str, Any]) -> dict[str, Any]:
    """A run's config.yaml as applying its trained models needs it: what only training reads is
    dropped, so a run directory still works where its training inputs are gone (another
    machine, a periodic checkpoint rotated away): each stage's resume_from / load_from (the
    config checks would ask for those files), and each timm encoder's initial weights
    (pretrained, checkpoint), which the run's own checkpoint replaces whole."""
    raw = copy.deepcopy(raw)
    for stage in (raw.get("training") or {}).values():
        if isinstance(stage, dict):
            stage.update({key: None for key in ("resume_from", "load_from") if key in stage})
    for role in ("teacher", "student"):
        for spec in ((raw.get(role) or {}).get("encoders") or {}).values():
            if isinstance(spec, dict) and spec.get("type") == "timm":
                spec.update(pretrained=False, checkpoint=None, checkpoint_format=None)
    return raw


class RunModels:
    """The models of one run directory, each loaded with its card, checked file by file."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        for name in ("config.yaml", "results.json"):
            if not (self.run_dir / name).is_file():
                what = "run directory not found" if not self.run_dir.is_dir() else f"{name} missing"
                raise UserError(f"{self.run_dir}: {what} (predict reads a run directory made by `mmdistill run`, "
                                "or an .onnx file made by `mmdistill compress`)")
        import yaml

        from mmdistill.config.loading import validate_config

        self.config = validate_config(applying_config(yaml.safe_load((self.run_dir / "config.yaml").read_text())),
                                      str(self.run_dir / "config.yaml"))
        try:
            self.results = json.loads((self.run_dir / "results.json").read_text())
        except ValueError as exc:
            raise UserError(f"{self.run_dir / 'results.json'}: not valid JSON ({exc})") from None
        self.compressed: dict[str, Any] = self.results.get("compressed", {})

    def default(self) -> str:
        return "best" if any(e.get("default_int8") for e in self.compressed.values()) else "fp32"

    def load(self, model: str | None, threads: int | None = None) -> DeployedModel:
        name = model or self.default()
        if name == "best":
            best = next((n for n, e in self.compressed.items() if e.get("default_int8")), None)
            if best is None:
                raise UserError(f"{self.run_dir}: no compressed models (run `mmdistill compress {self.run_dir}`), "
                                "so no `best` int8 model; --model fp32 is the trained student")
            name = best
        if name == "teacher":
            return DeployedModel(card_for(self.config, "teacher", self.results), "teacher",
                                 net_backend(self.net("teacher", self._teacher_checkpoint())))
        card = card_for(self.config, "student", self.results)
        if name == "fp32":
            return DeployedModel(card, name, net_backend(self.net("student", self.run_dir / "checkpoints" /
                                                                  "student_best.safetensors")))
        if name not in self.compressed:
            choices = ", ".join(["fp32", "teacher", *(["best"] if self.compressed else []), *self.compressed])
            raise UserError(f"--model: {self.run_dir} has no model {name!r} (choose one of {choices})")
        return DeployedModel(card, name, self._compressed(name, card, threads))

    # ---------------------------------------------------------------- pieces
    def tasks(self) -> list:
        from mmdistill.data.labels import TaskInfo

        return [TaskInfo(name, t["type"], tuple(t["classes"])) for name, t in self.results["tasks"].items()]

    def net(self, role: str, checkpoint: Path, channels: str | None = None) -> torch.nn.Module:
        from mmdistill.compress import prune_channels
        from mmdistill.models.build import build_net
        from mmdistill.models.checkpoints import load_weights

        if not checkpoint.is_file():
            raise UserError(f"{self.run_dir}: {role} checkpoint missing: {checkpoint}")
        net = build_net(self.config, role, self.tasks(), self.results.get("embedding_dims", {}))
        if channels:
            prune_channels.rebuild(net, prune_channels.plan_from_metadata(channels))
        load_weights(net, checkpoint, f"{role} checkpoint")
        return net.eval()

    def _teacher_checkpoint(self) -> Path:
        if self.config.teacher.checkpoint is not None:
            return Path(self.config.teacher.checkpoint)
        return self.run_dir / "checkpoints" / "teacher_best.safetensors"

    def _student_file(self, entry: dict[str, Any]) -> torch.nn.Module:
        from safetensors import safe_open

        path = self.run_dir / entry["file"]
        if not path.is_file():
            raise UserError(f"{self.run_dir}: compressed model file missing: {path}")
        with safe_open(str(path), framework="pt") as fh:
            channels = (fh.metadata() or {}).get("channels")
        return self.net("student", path, channels)

    def _source(self, source: str) -> torch.nn.Module:
        if source == "fp32":
            return self.net("student", self.run_dir / "checkpoints" / "student_best.safetensors")
        return self._student_file(self.compressed[source])

    def _compressed(self, name: str, card: ModelCard, threads: int | None) -> Backend:
        from mmdistill.compress import quantize
        from mmdistill.compress.tensor_model import tensor_student

        entry = self.compressed[name]
        fmt, path = entry["format"], self.run_dir / entry["file"]
        if not path.is_file():
            raise UserError(f"{self.run_dir}: compressed model file missing: {path}")
        if fmt == "safetensors":
            return net_backend(self._student_file(entry))
        if fmt == "onnx":
            return _onnx_backend(path, card.input_names, threads)
        if fmt in ("torch_int8_dynamic", "torch_int8_static_fx"):
            float_model = tensor_student(self._source(entry["source"]))
            example = tuple(torch.zeros(1, *_shape(i)) for i in card.inputs)
            quantized = quantize.load(fmt.removeprefix("torch_int8_"), float_model, path, example)
            names = card.input_names

            def run(inputs: dict[str, Any]) -> torch.Tensor:
                from mmdistill.compress.measure import nondeterministic

                with nondeterministic():
                    return quantized(*(inputs[n] for n in names))

            return run
        raise UserError(f"{self.run_dir}: compressed model {name!r} has an unknown format {fmt!r}")


def _shape(spec: Any) -> tuple[int, ...]:
    if spec.kind in ("image", "stacked_image"):
        return (sum(spec.channels), *spec.size)
    return (spec.dim,)
