"""Loss terms: small modules registered by name, each documenting its formula.

A term is called as `term(student, teacher, batch)` with two ModelOutputs and a LossBatch
(labels, dataset indices, training progress), and returns a scalar averaged over the tasks it
applies to. Every term declares its
parameters as a pydantic model, so an unknown or mistyped parameter is a config error that
lists the allowed ones, and whether it needs a teacher, so the teacher stage cannot ask for KD.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import nn

from mmdistill.models.net import ModelOutput, MultiModalNet, TaskInfo
from mmdistill.registry import Registry


@dataclass
class LossBatch:
    """What a term may read besides the model outputs.

    `index` is each sample's position in its split (memory-bank terms such as CRD key on it);
    `progress` runs from 0 at the first step of the stage to 1 at the last (for schedules).
    """

    labels: dict[str, torch.Tensor]
    index: torch.Tensor | None = None
    progress: float = 0.0


class TermParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Term(nn.Module):
    """Base class. `needs_teacher` terms are only valid in the student stage."""

    needs_teacher: bool = True
    Params: type[TermParams] = TermParams

    def features(self) -> list[tuple[str, str]]:
        """(role, feature reference) pairs this term reads; checked against the models."""
        return []


TERMS: Registry[type[Term]] = Registry("loss term")


def _mean(values: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack(values).mean()


# --------------------------------------------------------------------------- task losses


class TaskParams(TermParams):
    label_smoothing: float = Field(0.0, ge=0, lt=1)


@TERMS.register("task")
class TaskLoss(Term):
    """Supervised loss on the labels, averaged over tasks.

    multiclass: CE = -sum_c q_c log softmax(z)_c with q = (1-eps) onehot(y) + eps/C
    binary:     BCE = -[y log sigmoid(z) + (1-y) log(1 - sigmoid(z))]
    """

    needs_teacher = False
    Params = TaskParams

    def __init__(self, params: TaskParams, tasks: list[TaskInfo], student: MultiModalNet, teacher: MultiModalNet | None):
        super().__init__()
        self.params = params
        self.tasks = tasks

    def forward(self, student: ModelOutput, teacher: ModelOutput | None, batch: LossBatch) -> torch.Tensor:
        losses = []
        for task in self.tasks:
            z, y = student.logits[task.name], batch.labels[task.name]
            if task.type == "binary":
                losses.append(F.binary_cross_entropy_with_logits(z, y.to(z.dtype)))
            else:
                losses.append(F.cross_entropy(z, y, label_smoothing=self.params.label_smoothing))
        return _mean(losses)


# --------------------------------------------------------------------------- logit KD


class KDParams(TermParams):
    temperature: float = Field(4.0, gt=0)


@TERMS.register("kd_logits")
class LogitKD(Term):
    """Hinton et al. 2015, "Distilling the Knowledge in a Neural Network", averaged over tasks.

    multiclass: T^2 * KL(softmax(t/T) || softmax(s/T)), mean over the batch
    binary:     T^2 * KL(Bern(sigmoid(t/T)) || Bern(sigmoid(s/T))), mean over the batch
    The T^2 factor keeps gradient magnitudes comparable across temperatures (the paper's
    argument; for the sigmoid case the gradient also scales as 1/T^2 near agreement).
    """

    Params = KDParams

    def __init__(self, params: KDParams, tasks: list[TaskInfo], student: MultiModalNet, teacher: MultiModalNet | None):
        super().__init__()
        self.T = params.temperature
        self.tasks = tasks

    def forward(self, student: ModelOutput, teacher: ModelOutput | None, batch: LossBatch) -> torch.Tensor:
        assert teacher is not None
        T = self.T
        losses = []
        for task in self.tasks:
            s, t = student.logits[task.name] / T, teacher.logits[task.name].detach() / T
            if task.type == "binary":
                p_t = torch.sigmoid(t)
                kl = p_t * (F.logsigmoid(t) - F.logsigmoid(s)) + (1 - p_t) * (F.logsigmoid(-t) - F.logsigmoid(-s))
                losses.append(kl.mean() * T * T)
            else:
                kl = F.kl_div(F.log_softmax(s, -1), F.log_softmax(t, -1), reduction="batchmean", log_target=True)
                losses.append(kl * T * T)
        return _mean(losses)


# --------------------------------------------------------------------------- feature terms


def _check_feature_ref(value: str) -> str:
    kind, sep, modality = value.partition(":")
    if value == "fused" or (sep and kind in ("projection", "embedding") and modality):
        return value
    raise ValueError("expected 'fused', 'projection:<modality>' or 'embedding:<modality>'")


class FeatureParams(TermParams):
    student: str = "fused"
    teacher: str = "fused"

    @field_validator("student", "teacher")
    @classmethod
    def _known_feature(cls, value: str) -> str:
        return _check_feature_ref(value)


class FeatureTerm(Term):
    """Reads one student and one teacher feature; a learnable linear map (FitNets, Romero et
    al. 2015) brings the student feature to the teacher's size when they differ."""

    Params = FeatureParams

    def __init__(self, params: FeatureParams, tasks: list[TaskInfo], student: MultiModalNet, teacher: MultiModalNet | None):
        super().__init__()
        self.params = params
        assert teacher is not None
        s_dim, t_dim = student.feature_dim(params.student), teacher.feature_dim(params.teacher)
        self.regressor = nn.Identity() if s_dim == t_dim else nn.Linear(s_dim, t_dim)

    def features(self) -> list[tuple[str, str]]:
        return [("student", self.params.student), ("teacher", self.params.teacher)]

    def pair(self, student: ModelOutput, teacher: ModelOutput) -> tuple[torch.Tensor, torch.Tensor]:
        return self.regressor(student.feature(self.params.student)), teacher.feature(self.params.teacher).detach()


@TERMS.register("feat_l2")
class FeatureL2(FeatureTerm):
    """Feature regression (FitNets): mean over batch and dims of (r(h_s) - h_t)^2."""

    def forward(self, student: ModelOutput, teacher: ModelOutput | None, batch: LossBatch) -> torch.Tensor:
        s, t = self.pair(student, teacher)
        return F.mse_loss(s, t)


@TERMS.register("feat_cos")
class FeatureCosine(FeatureTerm):
    """Directional alignment: mean over batch of 1 - cos(r(h_s), h_t); blind to feature scale."""

    def forward(self, student: ModelOutput, teacher: ModelOutput | None, batch: LossBatch) -> torch.Tensor:
        s, t = self.pair(student, teacher)
        return (1 - F.cosine_similarity(s, t, dim=-1)).mean()

