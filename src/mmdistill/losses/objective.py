"""The objective: a weighted sum of registered terms, from a preset name or an explicit list.

Presets name the combinations the seed repositories used, so `objective.preset: kl_bce`
reproduces seed 002's baseline exactly (0.7 * KD + 0.3 * BCE, T = 4).
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import ValidationError
from torch import nn

from mmdistill.config.schema import ExperimentConfig, TermSpec
from mmdistill.errors import UserError
from mmdistill.losses.terms import TERMS, LossBatch, Term
from mmdistill.models.net import ModelOutput, MultiModalNet, TaskInfo

PRESETS: dict[str, list[dict[str, Any]]] = {
    "task_only": [{"term": "task", "weight": 1.0}],
    "kd": [{"term": "task", "weight": 0.5}, {"term": "kd_logits", "weight": 0.5, "params": {"temperature": 4.0}}],
    "kl_bce": [{"term": "kd_logits", "weight": 0.7, "params": {"temperature": 4.0}}, {"term": "task", "weight": 0.3}],
    "kl_l2_bce": [
        {"term": "kd_logits", "weight": 0.5, "params": {"temperature": 4.0}},
        {"term": "feat_l2", "weight": 0.2},
        {"term": "task", "weight": 0.3},
    ],
    "feat_l2_cos": [{"term": "feat_l2", "weight": 1.0}, {"term": "feat_cos", "weight": 1.0}, {"term": "task", "weight": 1.0}],
}


def resolve_terms(preset: str | None, terms: list[TermSpec] | None, key: str = "objective") -> list[TermSpec]:
    if terms:
        return list(terms)
    if preset not in PRESETS:
        raise UserError(f"{key}.preset: unknown preset {preset!r}; choose one of {', '.join(sorted(PRESETS))}")
    return [TermSpec.model_validate(t) for t in PRESETS[preset]]


def _validated_params(spec: TermSpec, key: str):
    cls = TERMS.get(spec.term, f"{key}.term")
    try:
        return cls, cls.Params.model_validate(spec.params)
    except ValidationError as exc:
        err = exc.errors()[0]
        allowed = ", ".join(cls.Params.model_fields) or "none"
        what = "unknown parameter" if err["type"] == "extra_forbidden" else err["msg"]
        raise UserError(f"{key}.params.{'.'.join(map(str, err['loc']))}: {what} "
                        f"(term {spec.term!r} takes: {allowed})") from None


def check_objective(config: ExperimentConfig) -> None:
    """Term names, parameters and the features they read, checked before anything is built."""
    models = {"student": set(config.student.encoders), "teacher": set(config.teacher.encoders)}
    for i, spec in enumerate(resolve_terms(config.objective.preset, config.objective.terms)):
        key = f"objective.terms.{i}" if config.objective.terms else f"objective.preset {config.objective.preset!r}, term {i}"
        cls, params = _validated_params(spec, key)
        for role in ("student", "teacher"):
            ref = getattr(params, role, None)
            if ref and ref != "fused" and ref.partition(":")[2] not in models[role]:
                raise UserError(f"{key}.params.{role}: the {role} has no modality {ref.partition(':')[2]!r} "
                                f"(it reads {', '.join(sorted(models[role]))})")


class Objective(nn.Module):
    """sum_i w_i * term_i(student, teacher, batch); also reports each weighted part."""

    def __init__(self, terms: list[TermSpec], tasks: list[TaskInfo], student: MultiModalNet,
                 teacher: MultiModalNet | None, key: str = "objective"):
        super().__init__()
        self.names: list[str] = []
        self.weights: list[float] = []
        modules: list[Term] = []
        for i, spec in enumerate(terms):
            cls, params = _validated_params(spec, f"{key}.terms.{i}")
            if cls.needs_teacher and teacher is None:
                raise UserError(f"{key}.terms.{i}: term {spec.term!r} needs a teacher")
            modules.append(cls(params, tasks, student, teacher))
            self.names.append(spec.term if spec.term not in self.names else f"{spec.term}_{i}")
            self.weights.append(spec.weight)
        self.terms = nn.ModuleList(modules)
        self.needs_teacher = any(t.needs_teacher for t in modules)

    def forward(self, student: ModelOutput, teacher: ModelOutput | None,
                batch: LossBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        parts = {name: w * term(student, teacher, batch) for name, w, term in zip(self.names, self.weights, self.terms)}
        return sum(parts.values()), parts


def build_objective(preset: str | None, terms: list[TermSpec] | None, tasks: list[TaskInfo],
                    student: MultiModalNet, teacher: MultiModalNet | None) -> Objective:
    return Objective(resolve_terms(preset, terms), tasks, student, teacher)
