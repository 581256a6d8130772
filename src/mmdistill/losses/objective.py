"""The objective: a weighted sum of registered terms, from a preset name or an explicit list
(`presets.py` turns either into the list of terms for the models at hand). Each term may carry
a weight schedule (`schedule: linear_warmup`, `warmup`), applied here from `batch.progress`.
"""

from __future__ import annotations

import torch
from pydantic import ValidationError
from torch import nn

from mmdistill.config.schema import ExperimentConfig, TermSpec
from mmdistill.errors import UserError
from mmdistill.losses.presets import PRESET_NOTES, PRESETS, resolve_terms  # noqa: F401  (PRESETS re-exported)
from mmdistill.losses.terms import TERMS, LossBatch, Term
from mmdistill.models.net import ModelOutput, MultiModalNet, TaskInfo

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
    objective = config.objective
    for spec in resolve_terms(objective.preset, objective.terms, objective.overrides):
        if spec.term in objective.overrides:  # an error in an override is named where it was written
            _validated_params(spec, f"objective.overrides.{spec.term}")
    for i, spec in enumerate(resolve_terms(objective.preset, objective.terms, objective.overrides,
                                           list(config.student.encoders), list(config.teacher.encoders))):
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
            name = spec.name or spec.term
            self.names.append(name if name not in self.names else f"{name}_{i}")
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

    def dev_loss(self, student: ModelOutput, teacher: ModelOutput | None, batch: LossBatch) -> torch.Tensor:
        """The objective on a dev batch, for `monitor: dev_loss`: every weighted term except the
        memory-bank ones (CRD), whose banks hold one entry per train sample and would be read
        at dev indices."""
        with torch.no_grad():
            parts = [self.weight_at(i, batch.progress) * term(student, teacher, batch)
                     for i, term in enumerate(self.terms) if not term.needs_dataset_size]
        return sum(parts) if parts else torch.zeros(())


def build_objective(preset: str | None, terms: list[TermSpec] | None, tasks: list[TaskInfo],
                    student: MultiModalNet, teacher: nn.Module | None, key: str = "objective",
                    overrides: dict | None = None) -> Objective:
    """The objective of a preset (with `overrides`) or of explicit `terms`, for these models."""
    teacher_reads = getattr(teacher, "modalities", None) or ([teacher.modality] if hasattr(teacher, "modality") else [])
    specs = resolve_terms(preset, terms, overrides, list(student.modalities), list(teacher_reads), key)
    return Objective(specs, tasks, student, teacher, key)


def student_objective(config: ExperimentConfig, tasks: list[TaskInfo], student: MultiModalNet,
                      teacher: nn.Module | None) -> Objective:
    """The KD student's objective as the config gives it (`objective.preset` with its
    `overrides`, or `objective.terms`)."""
    spec = config.objective
    return build_objective(spec.preset, spec.terms, tasks, student, teacher, overrides=spec.overrides)
