"""MultiModalNet: the one model class for teachers and students.

    modality -> Encoder -> Projection (to projection_dim) -> Fusion -> one head per task

It returns a typed ModelOutput, so loss terms read named fields (`projections["image"]`,
`fused`) rather than string keys that drift apart between models, which is exactly the bug one
of the seed repositories shipped with.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import torch
from torch import nn

from mmdistill.config.schema import ModelSpec, ModalitySpec, TaskSpec
from mmdistill.models.encoders import ENCODERS, Encoder
from mmdistill.models.fusion import build_fusion


@dataclass
class ModelOutput:
    """Everything a loss term may read. Binary-task logits are [B]; multiclass [B, classes]."""

    logits: dict[str, torch.Tensor]
    embeddings: dict[str, torch.Tensor] = field(default_factory=dict)
    projections: dict[str, torch.Tensor] = field(default_factory=dict)
    fused: torch.Tensor | None = None

    def feature(self, name: str) -> torch.Tensor:
        """Resolve a feature reference: `fused`, `projection:<modality>`, `embedding:<modality>`."""
        if name == "fused":
            assert self.fused is not None
            return self.fused
        kind, _, modality = name.partition(":")
        table = {"projection": self.projections, "embedding": self.embeddings}[kind]
        return table[modality]


@dataclass(frozen=True)
class TaskInfo:
    """A task as the model sees it: binary tasks have one logit, multiclass one per class."""

    name: str
    type: str
    classes: tuple[str, ...]

    @property
    def num_outputs(self) -> int:
        return 1 if self.type == "binary" else len(self.classes)


class MultiModalNet(nn.Module):
    def __init__(
        self,
        spec: ModelSpec,
        modalities: Mapping[str, ModalitySpec],
        tasks: list[TaskInfo],
        embedding_dims: Mapping[str, int] | None = None,
        key: str = "model",
    ):
        super().__init__()
        self.modalities = list(spec.encoders)
        self.tasks = tasks
        embedding_dims = embedding_dims or {}
        self.encoders = nn.ModuleDict()
        self.projections = nn.ModuleDict()
        for name, enc_spec in spec.encoders.items():
            factory = ENCODERS.get(enc_spec.type, f"{key}.encoders.{name}.type")
            encoder: Encoder = factory(enc_spec, modalities[name], f"{key}.encoders.{name}", in_dim=embedding_dims.get(name))
            self.encoders[name] = encoder
            self.projections[name] = nn.Sequential(nn.Linear(encoder.out_dim, spec.projection_dim), nn.LayerNorm(spec.projection_dim))
        self.fusion = build_fusion(spec.fusion, self.modalities, spec.projection_dim, f"{key}.fusion")
        self.dropout = nn.Dropout(spec.dropout)
        self.heads = nn.ModuleDict({t.name: nn.Linear(self.fusion.out_dim, t.num_outputs) for t in tasks})

    def forward(self, inputs: Mapping[str, Any]) -> ModelOutput:
        """`inputs` maps modality name -> image tensor, list of strings, or embedding tensor."""
        embeddings = {m: self.encoders[m](inputs[m]) for m in self.modalities}
        projections = {m: self.projections[m](embeddings[m]) for m in self.modalities}
        fused = self.fusion([projections[m] for m in self.modalities])
        hidden = self.dropout(fused)
        logits = {}
        for task in self.tasks:
            out = self.heads[task.name](hidden)
            logits[task.name] = out.squeeze(-1) if task.type == "binary" else out
        return ModelOutput(logits=logits, embeddings=embeddings, projections=projections, fused=fused)

    def feature_dim(self, name: str) -> int:
        if name == "fused":
            return self.fusion.out_dim
        kind, _, modality = name.partition(":")
        if kind == "projection":
            return self.projections[modality][0].out_features
        return self.encoders[modality].out_dim

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
