"""What a trained model needs to be applied to new data, and what its output means: the model
card. It travels with the model: in a run directory (derived from config.yaml and results.json)
and inside every ONNX file `compress` writes (its `metadata_props`, key `mmdistill`), so a
deployed file can be used with nothing but onnxruntime, an image library and numpy.

For each input (one per modality the model reads, in the model's order, which is the ONNX
input order): its kind, the table column(s) it comes from, the channels each file is decoded
to (RGB order; 1 = grayscale), the size [height, width] it is resized to (bilinear,
antialiased), the levels it is quantised to before normalisation (255: the run read its images
from the 8-bit decoded-image cache; null: not quantised), and the per-channel mean and std it
is normalised with: x = (pixel / 255 - mean) / std, channels first (NCHW). For each task: its
type and class list. The output `logits` holds the tasks' logits side by side in task order: a
binary task is one column (sigmoid gives the positive class's probability), a multiclass
task one column per class (softmax).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

FORMAT = 1
METADATA_KEY = "mmdistill"


@dataclass
class CardInput:
    name: str
    kind: str                     # image | stacked_image | embedding | text
    columns: list[str]
    channels: list[int] = field(default_factory=list)   # per column, images only
    size: list[int] = field(default_factory=list)       # [height, width], images only
    mean: list[float] = field(default_factory=list)
    std: list[float] = field(default_factory=list)
    levels: int | None = None
    dim: int | None = None        # embeddings only


@dataclass
class CardTask:
    name: str
    type: str                     # binary | multiclass
    classes: list[str]
    column: str = ""              # its label column in a table (default: the task name)

    @property
    def width(self) -> int:
        """Its number of columns in the output."""
        return 1 if self.type == "binary" else len(self.classes)


@dataclass
class ModelCard:
    inputs: list[CardInput]
    tasks: list[CardTask]
    output: str = "logits"
    layout: str = "NCHW"
    channel_order: str = "RGB"
    format: int = FORMAT

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "ModelCard":
        raw = json.loads(text)
        if raw.get("format") != FORMAT:
            raise ValueError(f"model card format {raw.get('format')!r}, this mmdistill reads {FORMAT}")
        return cls(inputs=[CardInput(**i) for i in raw["inputs"]], tasks=[CardTask(**t) for t in raw["tasks"]],
                   output=raw["output"], layout=raw["layout"], channel_order=raw["channel_order"])

    @property
    def input_names(self) -> list[str]:
        return [i.name for i in self.inputs]


def card_for(config: Any, role: str, results: dict[str, Any], data: Any = None) -> ModelCard:
    """The card of the run's `role` model ("student" or "teacher"), from its resolved config and
    either the data as the run loaded it (`data`: its tasks, resolved image statistics, image
    levels and embedding sizes) or, without the data at hand, what results.json recorded."""
    from mmdistill.config.schema import hw

    if data is not None:
        from mmdistill.data.stats import image_stats

        levels = data.datasets["test"].image_levels()
        stats = {name: {**stat, "levels": levels.get(name)} for name, stat in image_stats(data.modalities).items()}
        dims = dict(data.embedding_dims)
        task_list = [(t.name, t.type, list(t.classes)) for t in data.tasks]
    else:
        stats, dims = results.get("image_stats", {}), results.get("embedding_dims", {})
        task_list = [(name, t["type"], list(t["classes"])) for name, t in results["tasks"].items()]
    inputs = []
    for name in getattr(config, role).encoders:
        spec = config.data.modalities[name]
        entry = CardInput(name=name, kind=spec.kind,
                          columns=list(spec.columns) if spec.kind == "stacked_image" else [spec.column])
        if spec.kind in ("image", "stacked_image"):
            stat = stats.get(name, {})
            entry.channels = list(spec.channels) if spec.kind == "stacked_image" else [spec.channels]
            entry.size = list(hw(spec.size))
            entry.mean, entry.std = list(stat.get("mean", [])), list(stat.get("std", []))
            entry.levels = stat.get("levels", 255 if config.cache.images else None)
        elif spec.kind == "embedding":
            entry.dim = dims.get(name)
        inputs.append(entry)
    tasks = [CardTask(name, kind, classes, config.tasks[name].column or name) for name, kind, classes in task_list]
    return ModelCard(inputs=inputs, tasks=tasks)
