"""Recovering what pruning cost: a few epochs of the run's own distillation (same objective,
same teacher, same data and seed), through mmdistill's train_stage.

The stage keeps its best-on-dev weights, as every stage does; its per-epoch rows go to
`compressed/finetune_metrics.csv`, never to the run's metrics.csv.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L

from mmdistill.config.schema import CompressSpec, ExperimentConfig
from mmdistill.data.dataset import DataBundle, class_counts
from mmdistill.data.views import student_views
from mmdistill.losses.objective import student_objective
from mmdistill.models.net import MultiModalNet
from mmdistill.train.recorder import MetricsLog
from mmdistill.train.fit import StageResult, train_stage


def finetune(name: str, config: ExperimentConfig, spec: CompressSpec, student: MultiModalNet,
             teacher: MultiModalNet | None, data: DataBundle, log: MetricsLog, work_dir: Path) -> StageResult | None:
    """Distill `teacher` into the pruned `student` for `spec.finetune_epochs` (None when 0)."""
    if spec.finetune_epochs == 0:
        return None
    base = config.training.student
    # the student's own resume_from / load_from are its checkpoints, not the pruned model's
    stage = base.model_copy(update={"epochs": spec.finetune_epochs, "lr": spec.finetune_lr or base.lr / 2,
                                    "patience": None, "resume_from": None, "load_from": None})
    L.seed_everything(config.seed, workers=True, verbose=False)
    objective = student_objective(config, data.tasks, student, teacher)
    objective.set_dataset_size(len(data.datasets["train"]))
    if hasattr(objective, "set_class_counts"):  # terms with class-balanced weights
        counts = class_counts(data.datasets["train"])
        objective.set_class_counts({task: list(c.values()) for task, c in counts.items()})
    best = work_dir / f".{name}_finetune_best.safetensors"
    # Lightning keeps each module's train/eval mode: a student loaded for evaluation would
    # otherwise fine-tune with frozen BatchNorm statistics, stale after channels are removed
    student.train()
    try:
        return train_stage(name, config, stage, student, objective, data, log, best, teacher=teacher,
                           views=student_views(config))
    finally:
        best.unlink(missing_ok=True)
