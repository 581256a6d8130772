"""Attention transfer: a term on the spatial feature maps of image encoders.

The term uses nothing of the teacher's [C, H, W] feature map but its normalised attention map
Q_t / ||Q_t||, [1, H, W] (the teacher's side is never resized: the student's map is brought to
its size). So that is the teacher field it declares (`teacher_fields`), and what the
teacher-output cache stores per (sample, view): C times less than the raw map (about 200 KB a
row for a real CNN's last map), and, being normalised, within float16's range whatever the
activations' scale or p. The live teacher goes through the same function, so cached and live
runs give the loss the same numbers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator

from mmdistill.errors import UserError
from mmdistill.losses.terms import TERMS, LossBatch, Term, TermParams
from mmdistill.models.net import ModelOutput, MultiModalNet, TaskInfo

if TYPE_CHECKING:
    from mmdistill.config.schema import ExperimentConfig


def _map_ref(value: str) -> str:
    """`image` is shorthand for `feature_map:image`."""
    kind, sep, modality = value.partition(":")
    if not sep:
        kind, modality = "feature_map", value
    if kind != "feature_map" or not modality:
        raise ValueError("expected 'feature_map:<modality>' (or just the modality name)")
    return f"feature_map:{modality}"


def attention_field(modality: str, p: float) -> str:
    """The derived teacher field of attention transfer on `modality` with exponent p: the
    teacher's normalised attention map. p is in the name, so the cache key (which hashes the
    stored field names) changes with it, and two terms with different p never share a field."""
    return f"attention_map:{modality}:p={float(p)!r}"


class ATParams(TermParams):
    student: str = Field("feature_map:image", description="feature_map:<modality> (or just the modality)")
    teacher: str = Field("feature_map:image", description="feature_map:<modality> (or just the modality)")
    p: float = Field(2.0, gt=0, description="exponent of the activation-based attention map")

    @field_validator("student", "teacher")
    @classmethod
    def _feature_map(cls, value: str) -> str:
        return _map_ref(value)


@TERMS.register("at")
class AttentionTransfer(Term):
    """Attention Transfer, Zagoruyko & Komodakis ICLR 2017: mean (Q_s/||Q_s|| - Q_t/||Q_t||)^2 over batch and positions.

    Q = vec(mean_c |A_c|^p) is the spatial attention map of an encoder's last feature map A
    [B, C, H, W] (p = 2 as in the paper), L2-normalised per sample; the loss is the authors'
    code's `(at(x) - at(y)).pow(2).mean()` (the paper writes beta/2 * ||.||_2 with beta = 1000,
    so a term weight around 500-1000 reproduces its scale). Channel counts may differ. When
    the spatial sizes differ, the student's raw map mean_c |A_c|^p is resized to the teacher's
    H x W (bilinear, align_corners=False) before normalisation, so the teacher's map is
    never altered, and the cache stores only the teacher's normalised map (`teacher_fields`).
    Needs image encoders with a spatial map (tiny_cnn, timm CNNs); text, mlp
    and ViT-style (token) encoders are rejected when the config is checked.
    """

    Params = ATParams
    needs_feature_maps = True

    def __init__(self, params: ATParams, tasks: list[TaskInfo], student: MultiModalNet, teacher: MultiModalNet | None):
        super().__init__()
        assert teacher is not None
        self.params = params
        for role, model in (("student", student), ("teacher", teacher)):
            modality = getattr(params, role).partition(":")[2]
            if modality not in model.modalities:
                raise UserError(f"term 'at': the {role} has no modality {modality!r}")
            if not model.has_feature_map(modality):
                raise UserError(f"term 'at': the {role}'s {modality!r} encoder has no spatial feature map "
                                "(attention transfer needs a CNN: tiny_cnn or a timm CNN)")

    @classmethod
    def check_config(cls, params: ATParams, config: "ExperimentConfig", key: str) -> None:
        from mmdistill.models.encoders import encoder_feature_map_layout

        for role in ("student", "teacher"):
            modality = getattr(params, role).partition(":")[2]
            spec = getattr(config, role).encoders.get(modality)
            if spec is None or modality not in config.data.modalities:
                continue  # check_objective reports the missing modality itself
            try:
                layout = encoder_feature_map_layout(spec, config.data.modalities[modality])
            except Exception:  # an unknown timm name: building the model reports it properly
                continue
            if layout is None:
                raise UserError(f"{key}.params.{role}: term 'at' needs a spatial feature map, but the {role}'s "
                                f"modality {modality!r} uses a {spec.type} encoder"
                                f"{' (' + spec.name + ': tokens, not a map)' if spec.type == 'timm' else ''} "
                                "that has none; use tiny_cnn or a timm CNN")

    def features(self) -> list[tuple[str, str]]:
        return [("student", self.params.student), ("teacher", self.params.teacher)]

    @property
    def teacher_map_field(self) -> str:
        return attention_field(self.params.teacher.partition(":")[2], self.params.p)

    def teacher_fields(self) -> list[str]:
        """Only the teacher's normalised attention map: the loss reads nothing else of its
        feature map, which the teacher still returns (`features()`) to compute it from."""
        return [self.teacher_map_field]

    def derive_teacher_field(self, name: str, teacher: ModelOutput) -> torch.Tensor:
        """The teacher's Q_t / ||Q_t||: [B, 1, H, W], each sample's map of unit L2 norm."""
        if name != self.teacher_map_field:
            return super().derive_teacher_field(name, teacher)
        q_t = self.attention(teacher.feature(self.params.teacher).detach())
        return F.normalize(q_t.flatten(1), dim=1).view_as(q_t)

    def attention(self, fmap: torch.Tensor) -> torch.Tensor:
        """The raw spatial attention map mean_c |A_c|^p: [B, 1, H, W]."""
        return fmap.abs().pow(self.params.p).mean(1, keepdim=True)

    def forward(self, student: ModelOutput, teacher: ModelOutput | None, batch: LossBatch) -> torch.Tensor:
        assert teacher is not None
        q_t = self.teacher_field(self.teacher_map_field, teacher)  # stored by the cache, or from the live map
        q_s = self.attention(student.feature(self.params.student))
        if q_s.shape[-2:] != q_t.shape[-2:]:
            q_s = F.interpolate(q_s, size=q_t.shape[-2:], mode="bilinear", align_corners=False)
        q_s = F.normalize(q_s.flatten(1), dim=1)
        return (q_s - q_t.flatten(1)).pow(2).mean()
