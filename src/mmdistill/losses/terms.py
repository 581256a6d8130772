"""Loss terms: small modules registered by name, each documenting its formula.

A term is called as `term(student, teacher, batch)` with two ModelOutputs and a LossBatch
(labels, dataset indices, training progress), and returns a scalar averaged over the tasks it
applies to. Every term declares its
parameters as a pydantic model, so an unknown or mistyped parameter is a config error that
lists the allowed ones, and whether it needs a teacher, so the teacher stage cannot ask for KD.

This module holds the base classes and the task / logit / feature-regression terms; the
relational, distributional, contrastive and attention terms live in `relational.py`,
`crd.py` and `attention.py` (importing `mmdistill.losses` registers all of them).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Optional, Union

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import nn

from mmdistill.errors import UserError
from mmdistill.models.net import ModelOutput, MultiModalNet, TaskInfo
from mmdistill.registry import Registry

if TYPE_CHECKING:
    from mmdistill.config.schema import ExperimentConfig


@dataclass
class LossBatch:
    """What a term may read besides the model outputs.

    `index` is each sample's position in its split (memory-bank terms such as CRD key on it);
    `progress` runs from 0 at the first step of the stage to 1 at the last (for schedules).
    """

    labels: dict[str, torch.Tensor]
    index: torch.Tensor | None = None
    progress: float = 0.0


FEATURE_KINDS = ("projection", "embedding", "feature_map")


def is_feature_ref(name: str) -> bool:
    """Whether a teacher field is a ModelOutput feature read as is (`fused`, `logits[:<task>]`,
    `projection:<m>`, `embedding:<m>`, `feature_map:<m>`) rather than one a term derives."""
    kind = name.partition(":")[0]
    return name == "fused" or kind == "logits" or kind in FEATURE_KINDS


@dataclass
class TeacherOutput(ModelOutput):
    """A teacher's ModelOutput as the teacher-output cache gives it back: the stored features,
    plus the derived fields terms declared (`Term.teacher_fields`) by name, already computed."""

    derived: dict[str, torch.Tensor] = field(default_factory=dict)


class TermParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Term(nn.Module):
    """Base class. `needs_teacher` terms are only valid in the student stage.

    `needs_feature_maps`: the term reads `feature_map:<modality>` references, so the Objective
    asks those models for spatial maps. `needs_dataset_size`: the term keeps per-sample state
    (a memory bank) and must be told the size of the train split with `set_dataset_size(n)`
    before its first forward.
    """

    needs_teacher: bool = True
    needs_aux_heads: bool = False
    needs_feature_maps: bool = False
    needs_dataset_size: bool = False
    Params: type[TermParams] = TermParams

    def __init__(self, params: TermParams | None = None, tasks: list[TaskInfo] | None = None,
                 student: MultiModalNet | None = None, teacher: MultiModalNet | None = None):
        """Every term is built as cls(params, tasks, student, teacher); terms that need only
        their parameters and the task list inherit this."""
        super().__init__()
        self.params = params
        self.tasks = tasks or []

    def features(self) -> list[tuple[str, str]]:
        """(role, feature reference) pairs this term reads; checked against the models, and
        what makes them return feature maps."""
        return []

    def teacher_fields(self) -> list[str]:
        """What this term needs of the teacher's output, as the teacher-output cache
        (`cache/teacher_outputs.py`) stores it per (sample, view): by default each teacher
        feature of `features()`, as is. A term that only ever uses a function of a large feature
        names a derived field here instead and computes it in `derive_teacher_field`, so the
        cache stores that function's value rather than the feature (attention transfer: its
        [1, H, W] map instead of the teacher's [C, H, W] map). A derived field's name must carry
        every parameter its value depends on: the cache key hashes the names."""
        return [ref for role, ref in self.features() if role == "teacher"]

    def derive_teacher_field(self, name: str, teacher: ModelOutput) -> torch.Tensor:
        """Derived field `name` of `teacher_fields()`, [B, ...], from the teacher's live output.
        The cache build calls it on the teacher's output and the term on the live teacher's
        (through `teacher_field`), so cached and live runs give the loss the same numbers."""
        raise KeyError(f"{type(self).__name__} derives no teacher field {name!r}")

    def teacher_field(self, name: str, teacher: ModelOutput) -> torch.Tensor:
        """Derived field `name` of this batch's teacher output: as stored when the output came
        from the cache (a TeacherOutput that carries it), else computed from the live output."""
        if isinstance(teacher, TeacherOutput) and name in teacher.derived:
            return teacher.derived[name]
        return self.derive_teacher_field(name, teacher)

    @classmethod
    def check_config(cls, params: TermParams, config: "ExperimentConfig", key: str) -> None:
        """Checks that need the whole config (tasks, encoders), run by `check_objective`
        before any data is read; raise UserError naming `key`. Default: nothing to check."""

    def set_dataset_size(self, n: int) -> None:
        raise NotImplementedError(f"{type(self).__name__} keeps no per-sample state")


TERMS: Registry[type[Term]] = Registry("loss term")


def _mean(values: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack(values).mean()


def binary_kl(t: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Elementwise KL(Bern(sigmoid(t)) || Bern(sigmoid(s))) from logits, computed in log space."""
    p_t = torch.sigmoid(t)
    return p_t * (F.logsigmoid(t) - F.logsigmoid(s)) + (1 - p_t) * (F.logsigmoid(-t) - F.logsigmoid(-s))


# --------------------------------------------------------------------------- task losses


def _check_task_keys(mapping: dict | str, kind: str, param: str, config: "ExperimentConfig", key: str) -> None:
    for name in ({} if mapping == "balanced" else mapping):
        if name not in config.tasks:
            raise UserError(f"{key}.params.{param}: no task {name!r} (tasks: {', '.join(config.tasks)})")
        if config.tasks[name].type != kind:
            raise UserError(f"{key}.params.{param}.{name}: task {name!r} is {config.tasks[name].type}; "
                            f"{param} applies to {kind} tasks only")


class TaskParams(TermParams):
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    class_weights: Union[dict[str, list[float]], Literal["balanced"]] = Field(
        default_factory=dict, description="multiclass task -> one weight per class (in the task's class order), "
                                          "or 'balanced': n / (classes * count) from the train split")
    pos_weight: Union[dict[str, float], Literal["balanced"]] = Field(
        default_factory=dict, description="binary task -> weight of the positive class, or 'balanced': "
                                          "negatives / positives in the train split")

    @field_validator("class_weights")
    @classmethod
    def _positive_class_weights(cls, value):
        for name, weights in ({} if value == "balanced" else value).items():
            if not weights or min(weights) < 0 or sum(weights) <= 0:
                raise ValueError(f"class weights of task {name!r} must be non-negative and not all zero")
        return value

    @field_validator("pos_weight")
    @classmethod
    def _positive_pos_weight(cls, value):
        for name, weight in ({} if value == "balanced" else value).items():
            if weight <= 0:
                raise ValueError(f"pos_weight of task {name!r} must be positive")
        return value


@TERMS.register("task")
class TaskLoss(Term):
    """Supervised loss on the labels, averaged over tasks.

    multiclass: CE = -sum_c q_c log softmax(z)_c with q = (1-eps) onehot(y) + eps/C;
                with class_weights w, the weighted mean sum_i w_{y_i} CE_i / sum_i w_{y_i}
                (PyTorch's convention; each class term of the smoothed target is weighted by w_c)
    binary:     BCE = -[pw * y log sigmoid(z) + (1-y) log(1 - sigmoid(z))], pw = pos_weight (1)
    """

    needs_teacher = False
    Params = TaskParams

    def __init__(self, params: TaskParams, tasks: list[TaskInfo], student: MultiModalNet, teacher: MultiModalNet | None):
        super().__init__()
        self.params = params
        self.tasks = tasks
        self.balanced = {p for p in ("class_weights", "pos_weight") if getattr(params, p) == "balanced"}
        self.class_weights: dict[str, list[float]] = {} if "class_weights" in self.balanced else params.class_weights
        self.pos_weight: dict[str, float] = {} if "pos_weight" in self.balanced else params.pos_weight
        by_name = {t.name: t for t in tasks}
        for name, weights in self.class_weights.items():
            task = by_name.get(name)
            if task is None or task.type != "multiclass":
                raise UserError(f"class_weights: {name!r} is not a multiclass task "
                                f"(multiclass tasks: {', '.join(t.name for t in tasks if t.type == 'multiclass') or 'none'})")
            if len(weights) != len(task.classes):
                raise UserError(f"class_weights.{name}: {len(weights)} weights for {len(task.classes)} classes "
                                f"({', '.join(task.classes)})")
        for name in self.pos_weight:
            if name not in by_name or by_name[name].type != "binary":
                raise UserError(f"pos_weight: {name!r} is not a binary task "
                                f"(binary tasks: {', '.join(t.name for t in tasks if t.type == 'binary') or 'none'})")

    @classmethod
    def check_config(cls, params: TaskParams, config: "ExperimentConfig", key: str) -> None:
        _check_task_keys(params.class_weights, "multiclass", "class_weights", config, key)
        _check_task_keys(params.pos_weight, "binary", "pos_weight", config, key)

    def set_class_counts(self, counts: dict[str, list[int]]) -> None:
        """Resolve `balanced` weights from the train split's class counts (seed 004's
        use_class_weights_from_data): w_c = n / (C * n_c), pos_weight = n_neg / n_pos."""
        for task in self.tasks:
            n = [max(c, 1) for c in counts[task.name]]
            if task.type == "multiclass" and "class_weights" in self.balanced:
                self.class_weights[task.name] = [sum(n) / (len(n) * c) for c in n]
            if task.type == "binary" and "pos_weight" in self.balanced:
                self.pos_weight[task.name] = n[0] / n[1]
        self.balanced = set()

    def forward(self, student: ModelOutput, teacher: ModelOutput | None, batch: LossBatch) -> torch.Tensor:
        if self.balanced:
            raise RuntimeError("balanced class weights need set_class_counts() before the first step")
        losses = []
        for task in self.tasks:
            z, y = student.logits[task.name], batch.labels[task.name]
            if task.type == "binary":
                pw = self.pos_weight.get(task.name)
                pw = None if pw is None else torch.tensor(pw, dtype=z.dtype, device=z.device)
                losses.append(F.binary_cross_entropy_with_logits(z, y.to(z.dtype), pos_weight=pw))
            else:
                w = self.class_weights.get(task.name)
                w = None if w is None else torch.tensor(w, dtype=z.dtype, device=z.device)
                losses.append(F.cross_entropy(z, y, weight=w, label_smoothing=self.params.label_smoothing))
        return _mean(losses)


class AuxTaskParams(TermParams):
    label_smoothing: float = Field(0.0, ge=0, lt=1)


@TERMS.register("aux_task")
class AuxTaskLoss(Term):
    """Auxiliary per-modality loss (seed 004's use_auxiliary_loss): each modality's own head
    (`aux_heads: true`) is trained on the labels, so every modality stays useful on its own,
    which is what modality masking and missing modalities at test time need.

    mean over modalities m of the task loss (CE / BCE) of aux_logits[m], averaged over the
    samples in which m was not masked.
    """

    needs_teacher = False
    needs_aux_heads = True
    Params = AuxTaskParams

    def forward(self, student: ModelOutput, teacher: ModelOutput | None, batch: LossBatch) -> torch.Tensor:
        losses = []
        for i, (modality, logits) in enumerate(student.aux_logits.items()):
            keep = None if student.present is None else student.present[:, i]
            if keep is not None and not keep.any():
                continue
            for task in self.tasks:
                z, y = logits[task.name], batch.labels[task.name]
                if task.type == "binary":
                    per = F.binary_cross_entropy_with_logits(z, y.to(z.dtype), reduction="none")
                else:
                    per = F.cross_entropy(z, y, label_smoothing=self.params.label_smoothing, reduction="none")
                losses.append(per.mean() if keep is None else per[keep].mean())
        if not losses:
            return next(iter(student.logits.values())).sum() * 0.0
        return _mean(losses)


class FocalParams(TermParams):
    gamma: float = Field(2.0, ge=0, description="focusing parameter; 0 gives plain CE/BCE")
    alpha: Optional[float] = Field(None, gt=0, lt=1, description="binary: weight of positives (1-alpha for "
                                   "negatives; the paper uses 0.25); multiclass: a constant factor")


@TERMS.register("focal")
class FocalLoss(Term):
    """Focal loss, Lin et al. ICCV 2017, "Focal Loss for Dense Object Detection": FL = -a_t (1-p_t)^g log p_t.

    multiclass (softmax): p_t = softmax(z)_y, a_t = alpha (1 when unset), mean over the batch
    binary (sigmoid):     p_t = y p + (1-y)(1-p) with p = sigmoid(z), a_t = y alpha + (1-y)(1-alpha)
                          (1 when unset), mean over the batch (torchvision's sigmoid_focal_loss)
    gamma = 0 and no alpha is exactly CE / BCE. Per-class weights: use `task.class_weights`.
    """

    needs_teacher = False
    Params = FocalParams

    def forward(self, student: ModelOutput, teacher: ModelOutput | None, batch: LossBatch) -> torch.Tensor:
        gamma, alpha = self.params.gamma, self.params.alpha
        losses = []
        for task in self.tasks:
            z, y = student.logits[task.name], batch.labels[task.name]
            if task.type == "binary":
                y = y.to(z.dtype)
                ce = F.binary_cross_entropy_with_logits(z, y, reduction="none")
                p = torch.sigmoid(z)
                p_t = p * y + (1 - p) * (1 - y)
                loss = ce * (1 - p_t) ** gamma
                if alpha is not None:
                    loss = loss * (alpha * y + (1 - alpha) * (1 - y))
            else:
                log_p_t = F.log_softmax(z, dim=-1).gather(1, y.long().unsqueeze(1)).squeeze(1)
                loss = -((1 - log_p_t.exp()) ** gamma) * log_p_t
                if alpha is not None:
                    loss = loss * alpha
            losses.append(loss.mean())
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
                losses.append(binary_kl(t, s).mean() * T * T)
            else:
                kl = F.kl_div(F.log_softmax(s, -1), F.log_softmax(t, -1), reduction="batchmean", log_target=True)
                losses.append(kl * T * T)
        return _mean(losses)


class DKDParams(TermParams):
    alpha: float = Field(1.0, ge=0, description="weight of TCKD (target-class KD)")
    beta: float = Field(8.0, ge=0, description="weight of NCKD (non-target-class KD)")
    temperature: float = Field(4.0, gt=0)


@TERMS.register("dkd")
class DecoupledKD(Term):
    """Decoupled KD, Zhao et al. CVPR 2022: T^2 * (alpha * TCKD + beta * NCKD), mean over the batch.

    With p = softmax(z/T) and target class g:
      TCKD = KL([p_t,g, 1-p_t,g] || [p_s,g, 1-p_s,g])        (target vs all non-targets)
      NCKD = KL(p^_t || p^_s), p^ = softmax over the C-1 non-target logits / T
    Defaults alpha=1, beta=8, T=4 are the authors' CIFAR-100 settings (ImageNet: beta=0.5, T=1);
    the authors also ramp the DKD weight up linearly over the first epochs: give this term
    `schedule: linear_warmup` with `warmup` (a fraction of the stage) for that.
    binary tasks: the two-class distribution [1-p, p], p = sigmoid(z/T). Its only non-target
    class makes NCKD identically 0, and TCKD is the same whichever class is the target, so a
    binary task contributes alpha * T^2 * KL(Bern(sigmoid(t/T)) || Bern(sigmoid(s/T))), i.e.
    alpha times binary `kd_logits`, without reading the label.
    """

    Params = DKDParams

    def __init__(self, params: DKDParams, tasks: list[TaskInfo], student: MultiModalNet, teacher: MultiModalNet | None):
        super().__init__()
        self.params = params
        self.tasks = tasks

    @staticmethod
    def _split(z: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """log p_g, log(1 - p_g) and the log-softmax over the non-target logits, all exact."""
        mask = F.one_hot(target, z.shape[-1]).bool()
        others = z[~mask].view(z.shape[0], z.shape[-1] - 1)
        log_all = torch.logsumexp(z, dim=-1)
        log_target = z[mask] - log_all
        log_rest = torch.logsumexp(others, dim=-1) - log_all
        return log_target, log_rest, F.log_softmax(others, dim=-1)

    def forward(self, student: ModelOutput, teacher: ModelOutput | None, batch: LossBatch) -> torch.Tensor:
        assert teacher is not None
        T, alpha, beta = self.params.temperature, self.params.alpha, self.params.beta
        losses = []
        for task in self.tasks:
            s, t = student.logits[task.name] / T, teacher.logits[task.name].detach() / T
            if task.type == "binary":
                losses.append(alpha * binary_kl(t, s).mean() * T * T)
                continue
            y = batch.labels[task.name].long()
            s_g, s_rest, s_nt = self._split(s, y)
            t_g, t_rest, t_nt = self._split(t, y)
            tckd = t_g.exp() * (t_g - s_g) + t_rest.exp() * (t_rest - s_rest)
            nckd = (t_nt.exp() * (t_nt - s_nt)).sum(-1)
            losses.append((alpha * tckd + beta * nckd).mean() * T * T)
        return _mean(losses)


# --------------------------------------------------------------------------- feature terms


def _check_feature_ref(value: str) -> str:
    kind, sep, modality = value.partition(":")
    if value == "fused" or (sep and kind in ("projection", "embedding") and modality):
        return value
    raise ValueError("expected 'fused', 'projection:<modality>' or 'embedding:<modality>'")


class FeatureParams(TermParams):
    student: str = Field("fused", description="fused, projection:<modality> or embedding:<modality>")
    teacher: str = Field("fused", description="fused, projection:<modality> or embedding:<modality>")

    @field_validator("student", "teacher")
    @classmethod
    def _known_feature(cls, value: str) -> str:
        return _check_feature_ref(value)


class FeatureTerm(Term):
    """Reads one student and one teacher feature; a learnable linear map (FitNets, Romero et
    al. 2015) brings the student feature to the teacher's size when they differ.

    Terms that compare each model's features only with themselves (relational terms: RKD, SP,
    PKT, ...) set `match_dims = False` and get no map: their losses are defined for any sizes.
    """

    Params = FeatureParams
    match_dims: bool = True

    def __init__(self, params: FeatureParams, tasks: list[TaskInfo], student: MultiModalNet, teacher: MultiModalNet | None):
        super().__init__()
        self.params = params
        assert teacher is not None
        if self.match_dims:
            s_dim, t_dim = student.feature_dim(params.student), teacher.feature_dim(params.teacher)
            self.regressor = nn.Identity() if s_dim == t_dim else nn.Linear(s_dim, t_dim)
        else:
            self.regressor = nn.Identity()

    def features(self) -> list[tuple[str, str]]:
        return [("student", self.params.student), ("teacher", self.params.teacher)]

    def pair(self, student: ModelOutput, teacher: ModelOutput) -> tuple[torch.Tensor, torch.Tensor]:
        return self.regressor(student.feature(self.params.student)), teacher.feature(self.params.teacher).detach()


class FeatureL2Params(FeatureParams):
    reduction: Literal["mean", "sum"] = Field(
        "mean", description="over the feature dimensions: mean (FitNets, PyTorch's MSE) or sum (the squared "
                            "distance ||r(h_s) - h_t||^2 per sample, seed 003's); both then average the batch")


@TERMS.register("feat_l2")
class FeatureL2(FeatureTerm):
    """Feature regression (FitNets): mean over the batch of (r(h_s) - h_t)^2, averaged (reduction mean) or summed (sum) over dims.

    `reduction: sum` is seed 003's ||h_t - h_s||_2^2 per sample, D times the mean, so a
    `lamda_feat` tuned there carries over unchanged.
    """

    Params = FeatureL2Params

    def forward(self, student: ModelOutput, teacher: ModelOutput | None, batch: LossBatch) -> torch.Tensor:
        s, t = self.pair(student, teacher)
        if self.params.reduction == "mean":
            return F.mse_loss(s, t)
        return ((s - t) ** 2).flatten(1).sum(1).mean()


@TERMS.register("feat_cos")
class FeatureCosine(FeatureTerm):
    """Directional alignment: mean over batch of 1 - cos(r(h_s), h_t); blind to feature scale."""

    def forward(self, student: ModelOutput, teacher: ModelOutput | None, batch: LossBatch) -> torch.Tensor:
        s, t = self.pair(student, teacher)
        return (1 - F.cosine_similarity(s, t, dim=-1)).mean()
