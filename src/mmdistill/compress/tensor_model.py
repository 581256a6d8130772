"""The student as a module from tensors to one logits tensor, which FX quantization and the
ONNX exporter can take (MultiModalNet itself takes a dict and returns a dataclass).

`TensorStudent(model)(*tensors)` returns [B, sum of task outputs]: the task logits side by side
in `model.tasks` order (a binary task is one column). It calls `MultiModalNet.forward` itself,
so what is exported or quantized is the trained model's own function, projection
normalisation and complete modality masking included; the model's forward has no branch on
its inputs' values or shapes in eval mode, so it traces as it runs.
"""

from __future__ import annotations

from typing import Any, Iterator

import torch
from torch import nn

from mmdistill.config.schema import ExperimentConfig
from mmdistill.models.net import MultiModalNet, TaskInfo

TENSOR_KINDS = ("image", "stacked_image", "embedding")


def non_tensor_modalities(config: ExperimentConfig) -> list[str]:
    """Student modalities that are not tensors (text): such a student cannot be exported."""
    kinds = {name: config.data.modalities[name].kind for name in config.student.encoders}
    return [name for name, kind in kinds.items() if kind not in TENSOR_KINDS]


class TensorStudent(nn.Module):
    """(one tensor per student modality, in `model.modalities` order) -> [B, total outputs]."""

    def __init__(self, model: MultiModalNet):
        super().__init__()
        self.model = model
        self.names = list(model.modalities)

    def logits(self, inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
        out = self.model(dict(zip(self.names, inputs)))
        return torch.cat([out.logits[t.name].unsqueeze(-1) if t.type == "binary" else out.logits[t.name]
                          for t in self.model.tasks], dim=-1)


# FX traces neither *args nor optional inputs: one class per number of inputs.
class _One(TensorStudent):
    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        return self.logits((x0,))


class _Two(TensorStudent):
    def forward(self, x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
        return self.logits((x0, x1))


class _Three(TensorStudent):
    def forward(self, x0: torch.Tensor, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        return self.logits((x0, x1, x2))


def tensor_student(model: MultiModalNet) -> TensorStudent:
    classes = {1: _One, 2: _Two, 3: _Three}
    if len(model.modalities) not in classes:
        raise ValueError(f"a student with {len(model.modalities)} modalities is not supported for export (1 to 3)")
    return classes[len(model.modalities)](model).eval()


def split_logits(tasks: list[TaskInfo], flat: torch.Tensor) -> dict[str, torch.Tensor]:
    """[B, total outputs] -> {task: logits} shaped as MultiModalNet returns them."""
    out, start = {}, 0
    for task in tasks:
        part = flat[:, start:start + task.num_outputs]
        out[task.name] = part.squeeze(-1) if task.type == "binary" else part
        start += task.num_outputs
    return out


def flat_logits(tasks: list[TaskInfo], logits: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([logits[t.name].reshape(len(logits[t.name]), -1) for t in tasks], dim=-1)


def tensors_of(batch_inputs: dict[str, Any], names: list[str]) -> tuple[torch.Tensor, ...]:
    return tuple(batch_inputs[n] for n in names)


def plain_batches(data, split: str, batch_size: int, limit: int | None = None,
                  sample_seed: int | None = None) -> Iterator[dict[str, Any]]:
    """Batches of `split` without train augmentation, up to `limit` samples: in file order, or
    shuffled by `sample_seed` (a random sample of the split)."""
    dataset = data.datasets[split]
    augmenter = getattr(dataset, "augmenter", None)
    dataset.augmenter = None
    try:
        seen = 0
        shuffle = sample_seed is not None
        for batch in data.loader(split, batch_size, shuffle=shuffle, seed=sample_seed or 0):
            if limit is not None and seen >= limit:
                break
            if limit is not None and seen + len(batch["index"]) > limit:
                keep = limit - seen
                batch = {"index": batch["index"][:keep],
                         "inputs": {k: v[:keep] for k, v in batch["inputs"].items()},
                         "labels": {k: v[:keep] for k, v in batch["labels"].items()}}
            seen += len(batch["index"])
            yield batch
    finally:
        dataset.augmenter = augmenter
