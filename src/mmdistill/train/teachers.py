"""Where the KD student's teacher outputs come from, step by step: the frozen teacher run on
the fly (`FrozenTeacher`), its outputs read back from the on-disk cache (`CachedTeacher`,
`cache/teacher_outputs.py`), or embeddings extracted ahead of time (`models/precomputed.py`).
Each is a module called with the batch that returns a ModelOutput, so the training step does
not know which one it has.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import default_collate

from mmdistill.cache.teacher_outputs import Derivations, TeacherOutputs, flat_outputs, open_teacher_outputs
from mmdistill.distributed import autocast, broadcast, compute_device
from mmdistill.config.schema import ExperimentConfig
from mmdistill.data.dataset import DataBundle
from mmdistill.losses.objective import Objective
from mmdistill.losses.terms import TeacherOutput, is_feature_ref
from mmdistill.models.net import ModelOutput, MultiModalNet
from mmdistill.data.views import cached_views, view_batches
from mmdistill.models.precomputed import PrecomputedTeacher, sample_views

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


ROWS = "teacher_rows"  # the batch key under which the train loader brings the cached rows


class TeacherRows:
    """The train loader's collate for a cached teacher: the batch, plus its samples' teacher
    rows read from the store. The loader's worker processes then read them ahead of the step
    (the store reopens its files in each worker), instead of the training step reading them
    row by row while the GPU waits."""

    def __init__(self, outputs: "TeacherOutputs"):
        self.outputs = outputs

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        batch = default_collate(samples)
        index = batch["index"].numpy().astype(np.int64)
        view = batch["view"].numpy().astype(np.int64) if "view" in batch else np.zeros_like(index)
        batch[ROWS] = {field: torch.from_numpy(array) for field, array in self.outputs.read(index, view).items()}
        return batch


class CachedTeacher(nn.Module):
    """Teacher outputs read from the cache for the batch's (index, view) pairs, as a ModelOutput
    with the fields the objective reads (float32, on the batch's device): a TeacherOutput whose
    `derived` holds the fields terms derive (`Term.teacher_field` reads them). `outputs` is the
    on-disk store (`cache/teacher_outputs.py`) or the dev split's outputs kept in memory. A
    train batch made with `collate()` already holds them (on the device, with the batch)."""

    def __init__(self, outputs: "TeacherOutputs | MemoryOutputs"):
        super().__init__()
        self.outputs = outputs
        self.store = getattr(outputs, "store", None)

    def collate(self) -> TeacherRows | None:
        return TeacherRows(self.outputs) if isinstance(self.outputs, TeacherOutputs) else None

    def forward(self, batch: dict[str, Any]) -> TeacherOutput:
        rows = batch.get(ROWS)
        if rows is None:
            index, view, device = sample_views(batch)
            rows = {field: torch.from_numpy(array).to(device=device)
                    for field, array in self.outputs.read(index, view).items()}
        out = TeacherOutput(logits={})
        for field, value in rows.items():
            kind, _, name = field.partition(":")
            if field == "fused":
                out.fused = value
            elif not is_feature_ref(field):
                out.derived[field] = value
            else:
                {"logits": out.logits, "projection": out.projections, "embedding": out.embeddings,
                 "feature_map": out.feature_maps}[kind][name] = value
        return out


def teacher_fields(objective: Objective) -> list[str]:
    """What the cache stores for this objective: every task's logits and the fused vector, always
    (both small; between them they serve every built-in preset, so a grid over presets builds
    one store per teacher, not one per preset), plus each field its terms declare they need of
    the teacher (`Term.teacher_fields`): a feature they read as is (`projection:<m>`,
    `embedding:<m>`, `feature_map:<m>`), or one they derive from the teacher's output (attention
    transfer's `attention_map:<m>:p=<p>`, [1, H, W] where the feature map it comes from is
    [C, H, W])."""
    fields = {"logits", "fused"}
    for term in objective.terms:
        fields.update(term.teacher_fields())
    return sorted(fields)


def teacher_derivations(objective: Objective) -> Derivations:
    """{derived field: its value from a teacher ModelOutput} for each field the objective's terms
    derive (`Term.derive_teacher_field`): what the cache build and the dev outputs compute from
    the teacher, by the same function the term applies to a live teacher's output."""
    derive = {}
    for term in objective.terms:
        for name in term.teacher_fields():
            if not is_feature_ref(name) and name not in derive:
                derive[name] = lambda out, term=term, name=name: term.derive_teacher_field(name, out)
    return derive


class MemoryOutputs:
    """A frozen teacher's outputs on one unaugmented split, kept in memory: what the KD stage's
    dev loss reads every validation, computed once per stage (dev is small, and a teacher
    without augmentation gives the same outputs every epoch)."""

    def __init__(self, arrays: dict[str, np.ndarray]):
        self.arrays = arrays

    def read(self, index: np.ndarray, view: np.ndarray) -> dict[str, np.ndarray]:
        return {field: array[index] for field, array in self.arrays.items()}


@torch.no_grad()
def memory_outputs(config: ExperimentConfig, teacher: MultiModalNet, data: DataBundle, split: str,
                   fields: list[str], derive: Derivations | None = None) -> MemoryOutputs:
    dataset = data.datasets[split].select(set(config.teacher.encoders))
    device = compute_device(config)
    was_training = teacher.training
    teacher.eval().to(device)
    chunks: dict[str, list[np.ndarray]] = {}
    try:
        for batch in view_batches(dataset, 1, config.training.teacher.batch_size, config.data.num_workers):
            inputs = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch["inputs"].items()}
            with autocast(config, device):  # derived fields too, as the training step computes them
                flat = flat_outputs(teacher(inputs), fields, derive)
            for name, value in flat.items():
                chunks.setdefault(name, []).append(value.float().cpu().numpy())
    finally:
        teacher.cpu().train(was_training)
    return MemoryOutputs({name: np.concatenate(parts) for name, parts in chunks.items()})


def dev_teacher_source(config: ExperimentConfig, teacher: nn.Module | None, objective: Objective,
                       data: DataBundle) -> nn.Module | None:
    """The teacher's outputs on dev batches, for the KD stage's dev loss: a precomputed
    teacher's dev embeddings, or a real teacher's dev outputs computed once into memory."""
    if not objective.needs_teacher or teacher is None:
        return None
    if isinstance(teacher, PrecomputedTeacher):
        return teacher.for_split("dev")
    return CachedTeacher(memory_outputs(config, teacher, data, "dev", teacher_fields(objective),
                                        teacher_derivations(objective)))


def teacher_source(config: ExperimentConfig, teacher: MultiModalNet, objective: Objective,
                   data: DataBundle, epochs: int | None = None) -> nn.Module | None:
    """What a KD stage of `epochs` (default the student's) reads its teacher outputs from: None
    when the objective needs no teacher, the cache when `cache.teacher` is on (built now if
    missing or stale), else the frozen teacher run on the fly (also when the cache cannot be
    written)."""
    if not objective.needs_teacher:
        return None
    if not config.cache.teacher:
        return FrozenTeacher(teacher)
    views = cached_views(config, epochs if epochs is not None else config.training.student.epochs)
    outputs, path, built = open_teacher_outputs(config, teacher, data, teacher_fields(objective), views,
                                                teacher_derivations(objective))
    if not broadcast(outputs is not None) or outputs is None:  # every rank the same source, rank 0's
        return FrozenTeacher(teacher)
    log.info("teacher outputs cached in %s" if built else "reusing cached teacher outputs from %s", path)
    return CachedTeacher(outputs)
