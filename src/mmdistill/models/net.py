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
import torch.nn.functional as F
from torch import nn

from mmdistill.config.schema import ModelSpec, ModalitySpec
from mmdistill.data.dataset import ABSENT
from mmdistill.data.labels import TaskInfo
from mmdistill.models.encoders import ENCODERS, Encoder
from mmdistill.models.fusion import build_fusion


@dataclass
class ModelOutput:
    """Everything a loss term may read. Binary-task logits are [B]; multiclass [B, classes]."""

    logits: dict[str, torch.Tensor]
    embeddings: dict[str, torch.Tensor] = field(default_factory=dict)
    projections: dict[str, torch.Tensor] = field(default_factory=dict)
    fused: torch.Tensor | None = None
    # modality -> [B, C, H, W] encoder map; only for the modalities in `model.want_feature_maps`
    feature_maps: dict[str, torch.Tensor] = field(default_factory=dict)
    # modality -> task -> logits of that modality's own head (`aux_heads: true`)
    aux_logits: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    # [B, modalities] booleans: which modalities each sample kept (None: no masking)
    present: torch.Tensor | None = None

    def feature(self, name: str) -> torch.Tensor:
        """Resolve a feature reference: `fused`, `projection:<modality>`, `embedding:<modality>`,
        `feature_map:<modality>`."""
        if name == "fused":
            assert self.fused is not None
            return self.fused
        kind, _, modality = name.partition(":")
        if kind == "feature_map" and modality not in self.feature_maps:
            raise KeyError(f"no feature map for {modality!r}: add it to the model's want_feature_maps "
                           "(the Objective does this for terms that read feature maps)")
        table = {"projection": self.projections, "embedding": self.embeddings, "feature_map": self.feature_maps}[kind]
        return table[modality]


class NamedModules(nn.ModuleDict):
    """A ModuleDict keyed by user-chosen names (tasks, modalities). Names such as `type` or
    `Location.Category` cannot be module attributes, so they are stored under an escaped key
    and looked up by the name the user wrote."""

    @staticmethod
    def escape(name: str) -> str:
        key = name.replace(".", "\u2024")  # one-dot leader: looks like a dot, is not one
        return f"{key}_" if hasattr(nn.Module, key) or key.endswith("_") else key

    def __getitem__(self, name: str) -> nn.Module:
        return super().__getitem__(self.escape(name))

    def __setitem__(self, name: str, module: nn.Module) -> None:
        super().__setitem__(self.escape(name), module)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and super().__contains__(self.escape(name))


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
        self.encoders = NamedModules()
        self.projections = NamedModules()
        for name, enc_spec in spec.encoders.items():
            factory = ENCODERS.get(enc_spec.type, f"{key}.encoders.{name}.type")
            encoder: Encoder = factory(enc_spec, modalities[name], f"{key}.encoders.{name}", in_dim=embedding_dims.get(name))
            self.encoders[name] = encoder
            self.projections[name] = nn.Sequential(nn.Linear(encoder.out_dim, spec.projection_dim), nn.LayerNorm(spec.projection_dim))
        self.fusion = build_fusion(spec.fusion, self.modalities, spec.projection_dim, f"{key}.fusion")
        self.dropout = nn.Dropout(spec.dropout)
        self.heads = NamedModules()
        for task in tasks:
            self.heads[task.name] = nn.Linear(self.fusion.out_dim, task.num_outputs)
        self.normalize_projections = spec.normalize_projections
        self.probe_heads = spec.probe_heads
        self.masking = spec.masking
        self.aux_heads = NamedModules()
        if spec.aux_heads:
            for m in self.modalities:
                heads = NamedModules()
                for task in tasks:
                    heads[task.name] = nn.Linear(spec.projection_dim, task.num_outputs)
                self.aux_heads[m] = heads
        # Modalities whose encoder also returns its spatial feature map (attention transfer);
        # filled by the Objective from the terms it holds, empty otherwise (no extra work).
        self.want_feature_maps: set[str] = set()

    def forward(self, inputs: Mapping[str, Any]) -> ModelOutput:
        """`inputs` maps modality name -> image tensor, list of strings, or embedding tensor."""
        embeddings, feature_maps = {}, {}
        for m in self.modalities:
            if m in self.want_feature_maps:
                embeddings[m], feature_maps[m] = self.encoders[m].forward_with_map(inputs[m])
            else:
                embeddings[m] = self.encoders[m](inputs[m])
        projections = {m: self.projections[m](embeddings[m]) for m in self.modalities}
        if self.normalize_projections:
            projections = {m: F.normalize(p, dim=-1) for m, p in projections.items()}
        present = self._present(next(iter(projections.values())), inputs.get(ABSENT))
        fused = self.fusion([projections[m] for m in self.modalities], present)
        logits = self._heads(self.heads, self.dropout(fused.detach() if self.probe_heads else fused))
        aux = {m: self._heads(self.aux_heads[m], projections[m]) for m in self.modalities if m in self.aux_heads}
        return ModelOutput(logits=logits, embeddings=embeddings, projections=projections, fused=fused,
                           feature_maps=feature_maps, aux_logits=aux, present=present)

    def _heads(self, heads: nn.ModuleDict, hidden: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {}
        for task in self.tasks:
            z = heads[task.name](hidden)
            out[task.name] = z.squeeze(-1) if task.type == "binary" else z
        return out

    def _present(self, like: torch.Tensor, absent: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor | None:
        """Which modalities each sample keeps: not those its data lacks (`absent`, from the
        dataset), nor `masking.complete`, nor, while training, those random masking drops; and
        never none of them (one is restored at random among those the data has)."""
        absent = {m: flags for m, flags in (absent or {}).items() if m in self.modalities}
        if self.masking is None and not absent:
            return None
        complete = self.masking.complete if self.masking is not None else None
        if not self.training and not absent:  # eval: the fixed mask alone, with no branch on the data
            present = torch.ones_like(like[:, :1], dtype=torch.bool).expand(-1, len(self.modalities)).clone()
            if complete in self.modalities and len(self.modalities) > 1:
                present[:, self.modalities.index(complete)] = False
            return present
        batch = like.shape[0]
        present = torch.ones(batch, len(self.modalities), dtype=torch.bool, device=like.device)
        available = present.clone()
        for m, flags in absent.items():
            available[:, self.modalities.index(m)] = ~flags.to(device=like.device, dtype=torch.bool)
        present &= available
        if complete in self.modalities:
            present[:, self.modalities.index(complete)] = False
        if self.training and self.masking is not None and self.masking.random:
            probs = torch.tensor([self.masking.random.get(m, 0.0) for m in self.modalities], device=like.device)
            present &= torch.rand(batch, len(self.modalities), device=like.device) >= probs
        empty = ~present.any(dim=1)
        if empty.any():
            allowed = available.clone()
            if complete in self.modalities and len(self.modalities) > 1:
                allowed[:, self.modalities.index(complete)] = False
            allowed[~allowed.any(dim=1)] = True  # a sample whose data has nothing: any slot, read as zeros
            pick = torch.multinomial(allowed[empty].float(), 1).squeeze(1)
            present[empty.nonzero().squeeze(1), pick] = True
        return present

    def feature_dim(self, name: str) -> int:
        if name == "fused":
            return self.fusion.out_dim
        kind, _, modality = name.partition(":")
        if kind == "projection":
            return self.projections[modality][0].out_features
        return self.encoders[modality].out_dim

    def has_feature_map(self, modality: str) -> bool:
        """Whether the encoder of `modality` has a spatial [B, C, H, W] feature map to offer."""
        return self.encoders[modality].feature_map_layout() is not None

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
