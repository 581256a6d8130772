"""What the stages of one run share: its config, data and directory, the metrics log, the
models as they are made, and the results as they accumulate."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from mmdistill.config.schema import ExperimentConfig
from mmdistill.data.dataset import DataBundle, class_counts
from mmdistill.losses.objective import Objective, build_objective
from mmdistill.models.net import MultiModalNet
from mmdistill.models.precomputed import PrecomputedTeacher
from mmdistill.run.directory import RunDirectory
from mmdistill.train.fit import StageResult
from mmdistill.tracking import RunTrackers
from mmdistill.train.recorder import MetricsLog


@dataclass
class RunContext:
    config: ExperimentConfig
    data: DataBundle
    dir: RunDirectory
    log: MetricsLog
    teacher: MultiModalNet | PrecomputedTeacher
    teacher_only: bool = False
    resumed: bool = False  # the directory held this run already (a re-run after an interruption)
    data_signature: str = ""  # every record the run reads (cache/keys.data_signature), computed once
    student: MultiModalNet | None = None
    # stage name -> its dev/test metrics, in the order the stages ran
    stages: dict[str, StageResult] = field(default_factory=dict)
    # results.json as it accumulates; the report stage completes and writes it
    results: dict[str, Any] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)
    trackers: RunTrackers = field(default_factory=RunTrackers)  # logging.trackers (tracking/)

    @property
    def precomputed(self) -> PrecomputedTeacher | None:
        """The teacher when it is only its extracted embeddings (`data.source: embeddings`)."""
        return self.teacher if isinstance(self.teacher, PrecomputedTeacher) else None

    def class_counts(self) -> dict[str, list[int]]:
        """Train-split count of each class, per task (for `class_weights: balanced`)."""
        return {task: list(c.values()) for task, c in class_counts(self.data.datasets["train"]).items()}

    def supervised(self, model: MultiModalNet) -> Objective:
        """The loss of the stages without a teacher (the teacher itself, the baseline):
        `objective.supervised`, or the task loss alone."""
        spec = self.config.objective
        objective = build_objective("task_only" if not spec.supervised else None, spec.supervised, self.data.tasks,
                                    model, None, "objective.supervised")
        objective.set_class_counts(self.class_counts())
        return objective
