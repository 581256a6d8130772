"""Where the KD student's teacher outputs come from, step by step: the frozen teacher run on
the fly (`FrozenTeacher`), its outputs read back from the on-disk cache (`CachedTeacher`,
`cache/teacher_outputs.py`), or embeddings extracted ahead of time (`models/precomputed.py`).
Each is a module called with the batch that returns a ModelOutput, so the training step does
not know which one it has.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from mmdistill.cache.teacher_outputs import TeacherOutputs, open_teacher_outputs
from mmdistill.config.schema import ExperimentConfig
from mmdistill.data.dataset import DataBundle
from mmdistill.losses.objective import Objective
from mmdistill.models.net import ModelOutput, MultiModalNet
from mmdistill.models.precomputed import sample_views

log = logging.getLogger(__name__)


class FrozenTeacher(nn.Module):
    """The teacher run on the fly: no gradients, and eval mode whatever its parent asks."""

    def __init__(self, model: MultiModalNet):
        super().__init__()
        self.model = model
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.model.eval()

    def train(self, mode: bool = True) -> "FrozenTeacher":
        return super().train(False)

    @torch.no_grad()
    def forward(self, batch: dict[str, Any]) -> ModelOutput:
        return self.model(batch["inputs"])


class CachedTeacher(nn.Module):
    """Teacher outputs read from the cache for the batch's (index, view) pairs, as a ModelOutput
    with the fields the objective reads (float32, on the batch's device)."""

    def __init__(self, outputs: TeacherOutputs):
        super().__init__()
        self.outputs = outputs
        self.store = outputs.store

    def forward(self, batch: dict[str, Any]) -> ModelOutput:
        index, view, device = sample_views(batch)
        out = ModelOutput(logits={})
        for field, array in self.outputs.read(index, view).items():
            value = torch.from_numpy(array).to(device=device)
            kind, _, name = field.partition(":")
            if field == "fused":
                out.fused = value
            else:
                {"logits": out.logits, "projection": out.projections, "embedding": out.embeddings,
                 "feature_map": out.feature_maps}[kind][name] = value
        return out


def teacher_fields(objective: Objective) -> list[str]:
    """What the cache stores for this objective: every task's logits and the fused vector, always
    (both small; between them they serve every built-in preset, so a grid over presets builds
    one store per teacher, not one per preset), plus each other teacher feature its terms name
    (`projection:<m>`, `embedding:<m>`, `feature_map:<m>`)."""
    fields = {"logits", "fused"}
    for term in objective.terms:
        fields.update(ref for role, ref in term.features() if role == "teacher")
    return sorted(fields)


def teacher_source(config: ExperimentConfig, teacher: MultiModalNet, objective: Objective,
                   data: DataBundle) -> nn.Module | None:
    """What the KD student stage reads its teacher outputs from: None when the objective needs
    no teacher, the cache when `cache.teacher` is on (built now if missing or stale), else the
    frozen teacher run on the fly (also when the cache cannot be written)."""
    if not objective.needs_teacher:
        return None
    if not config.cache.teacher:
        return FrozenTeacher(teacher)
    outputs, path, built = open_teacher_outputs(config, teacher, data, teacher_fields(objective))
    if outputs is None:
        return FrozenTeacher(teacher)
    log.info("teacher outputs cached in %s" if built else "reusing cached teacher outputs from %s", path)
    return CachedTeacher(outputs)
