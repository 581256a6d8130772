"""The objective: a weighted sum of registered terms, from a preset name or an explicit list.

Presets name the combinations the seed repositories used, so `objective.preset: kl_bce`
reproduces seed 002's baseline exactly (0.7 * KD + 0.3 * BCE, T = 4). Each term may carry a
weight schedule (`schedule: linear_warmup`, `warmup`), applied here from `batch.progress`.
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

_KD = {"term": "kd_logits", "params": {"temperature": 4.0}}

# Feature terms read `fused` (the fused vector of each model) unless a preset says otherwise.
PRESETS: dict[str, list[dict[str, Any]]] = {
    # supervised only: the teacher stage and the baseline student
    "task_only": [{"term": "task", "weight": 1.0}],
    # Hinton KD with alpha = 0.5: 0.5 * task + 0.5 * KD (T = 4)
    "kd": [{"term": "task", "weight": 0.5}, {**_KD, "weight": 0.5}],
    # seed 002 baseline: 0.7 * KL (T = 4) + 0.3 * BCE/CE
    "kl_bce": [{**_KD, "weight": 0.7}, {"term": "task", "weight": 0.3}],
    # seed 002 variant 1: 0.5 * KL + 0.2 * L2 on the fused features + 0.3 * BCE/CE
    "kl_l2_bce": [
        {**_KD, "weight": 0.5},
        {"term": "feat_l2", "weight": 0.2},
        {"term": "task", "weight": 0.3},
    ],
    # seed 002 variant 2: 0.4 * KL + 0.2 * contrastive (pairwise-distance structure) + 0.2 * L2 + 0.2 * BCE/CE
    "kl_contrastive_l2_bce": [
        {**_KD, "weight": 0.4},
        {"term": "contrastive_dist", "weight": 0.2},
        {"term": "feat_l2", "weight": 0.2},
        {"term": "task", "weight": 0.2},
    ],
    # seed 003: feature regression (magnitude) + cosine (direction) + task, all weight 1
    "feat_l2_cos": [{"term": "feat_l2", "weight": 1.0}, {"term": "feat_cos", "weight": 1.0}, {"term": "task", "weight": 1.0}],
    # seed 000 `vanilla`: (1 - alpha) * task + alpha * KD with alpha = 0.5, T = 4
    "vanilla": [{"term": "task", "weight": 0.5}, {**_KD, "weight": 0.5}],
    # seed 000 `combined`: vanilla + 0.25 * L2 + 0.25 * cosine on the fused features
    # (seed 000 does not publish its beta/gamma; 0.25 each is our choice)
    "combined": [
        {"term": "task", "weight": 0.5},
        {**_KD, "weight": 0.5},
        {"term": "feat_l2", "weight": 0.25},
        {"term": "feat_cos", "weight": 0.25},
    ],
    # seed 000 `crd`: vanilla + 0.8 * CRD (0.8 is the CRD paper's weight)
    "crd": [{"term": "task", "weight": 0.5}, {**_KD, "weight": 0.5}, {"term": "crd", "weight": 0.8}],
    # seed 000 `rkd`: vanilla + RKD (distance 1 + angle 2, the RKD authors' code defaults)
    "rkd": [{"term": "task", "weight": 0.5}, {**_KD, "weight": 0.5}, {"term": "rkd", "weight": 1.0}],
    # seed 000 `mmd`: vanilla + MMD^2 between student and teacher fused features
    "mmd": [{"term": "task", "weight": 0.5}, {**_KD, "weight": 0.5}, {"term": "mmd", "weight": 1.0}],
}

PRESET_NOTES: dict[str, str] = {
    "task_only": "supervised loss only (teacher stage, baseline student)",
    "kd": "Hinton KD, alpha 0.5, T 4",
    "kl_bce": "seed 002 baseline: 0.7 KL + 0.3 BCE",
    "kl_l2_bce": "seed 002 variant 1: KL + feature L2 + BCE",
    "kl_contrastive_l2_bce": "seed 002 variant 2: KL + contrastive distances + L2 + BCE",
    "feat_l2_cos": "seed 003: feature L2 + cosine + task",
    "vanilla": "seed 000 vanilla: task + KD, alpha 0.5",
    "combined": "seed 000 combined: task + KD + feature L2 + cosine (fused)",
    "crd": "seed 000 crd: task + KD + CRD (fused)",
    "rkd": "seed 000 rkd: task + KD + RKD (fused)",
    "mmd": "seed 000 mmd: task + KD + MMD (fused)",
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
        cls.check_config(params, config, key)
        _check_aux_heads(cls, spec, config, key, ["student"])
    for i, spec in enumerate(config.objective.supervised or []):
        key = f"objective.supervised.{i}"
        cls, params = _validated_params(spec, key)
        if cls.needs_teacher:
            raise UserError(f"{key}.term: {spec.term!r} needs a teacher; the teacher and baseline stages have none "
                            f"(use task or focal)")
        cls.check_config(params, config, key)
        _check_aux_heads(cls, spec, config, key, ["teacher"] + (["student"] if config.training.baseline else []))


def _check_aux_heads(cls: type[Term], spec: TermSpec, config: ExperimentConfig, key: str, roles: list[str]) -> None:
    for role in roles:
        if cls.needs_aux_heads and not getattr(config, role).aux_heads:
            raise UserError(f"{key}.term: {spec.term!r} trains per-modality heads; set {role}.aux_heads: true")


class Objective(nn.Module):
    """sum_i w_i * term_i(student, teacher, batch); also reports each weighted part."""

    def __init__(self, terms: list[TermSpec], tasks: list[TaskInfo], student: MultiModalNet,
                 teacher: MultiModalNet | None, key: str = "objective"):
        super().__init__()
        self.names: list[str] = []
        self.weights: list[float] = []
        self.schedules: list[tuple[str | None, float]] = []
        modules: list[Term] = []
        for i, spec in enumerate(terms):
            cls, params = _validated_params(spec, f"{key}.terms.{i}")
            if cls.needs_teacher and teacher is None:
                raise UserError(f"{key}.terms.{i}: term {spec.term!r} needs a teacher")
            try:
                modules.append(cls(params, tasks, student, teacher))
            except UserError as exc:
                raise UserError(f"{key}.terms.{i}: {exc}") from None
            self.names.append(spec.term if spec.term not in self.names else f"{spec.term}_{i}")
            self.weights.append(spec.weight)
            self.schedules.append((spec.schedule, spec.warmup))
        self.terms = nn.ModuleList(modules)
        self.needs_teacher = any(t.needs_teacher for t in modules)
        # Terms reading `feature_map:<modality>` make those models return their spatial maps.
        for term in modules:
            for role, ref in term.features():
                kind, _, modality = ref.partition(":")
                model = student if role == "student" else teacher
                if kind == "feature_map" and model is not None:
                    model.want_feature_maps.add(modality)

    @property
    def needs_dataset_size(self) -> bool:
        return any(t.needs_dataset_size for t in self.terms)

    def set_dataset_size(self, n: int) -> None:
        """Tell terms with per-sample state (CRD's memory banks) the size of the train split."""
        for term in self.terms:
            if term.needs_dataset_size:
                term.set_dataset_size(n)

    def set_class_counts(self, counts: dict[str, list[int]]) -> None:
        """Give terms with data-derived weights (`class_weights: balanced`) the train counts."""
        for term in self.terms:
            if hasattr(term, "set_class_counts"):
                term.set_class_counts(counts)

    def weight_at(self, i: int, progress: float) -> float:
        """Term i's weight at `progress` (0..1 through the stage), after its schedule."""
        schedule, warmup = self.schedules[i]
        if schedule == "linear_warmup":
            return self.weights[i] * min(1.0, max(progress, 0.0) / warmup)
        return self.weights[i]

    def forward(self, student: ModelOutput, teacher: ModelOutput | None,
                batch: LossBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        parts = {name: self.weight_at(i, batch.progress) * term(student, teacher, batch)
                 for i, (name, term) in enumerate(zip(self.names, self.terms))}
        return sum(parts.values()), parts


def build_objective(preset: str | None, terms: list[TermSpec] | None, tasks: list[TaskInfo],
                    student: MultiModalNet, teacher: MultiModalNet | None, key: str = "objective") -> Objective:
    return Objective(resolve_terms(preset, terms), tasks, student, teacher, key)
