"""Stage 2, the KD student: the config's student trained on the objective (task loss plus the
distillation terms), its teacher outputs read from the teacher-output cache or the teacher run
live. With a precomputed teacher, the student's representation is probed as the teacher's was.

Reads: the teacher (trained, loaded or precomputed). Writes:
checkpoints/student_best.safetensors (student_last.ckpt while it trains), its metrics.csv rows.
"""

from __future__ import annotations

import logging

import lightning as L

from mmdistill.data.views import student_views
from mmdistill.eval.probe import probe_features, probe_splits
from mmdistill.losses.objective import student_objective
from mmdistill.models.build import build_model
from mmdistill.models.checkpoints import load_weights
from mmdistill.run.context import RunContext
from mmdistill.run.stages import Stage
from mmdistill.train import fit

log = logging.getLogger(__name__)


class StudentStage(Stage):
    name = "student"

    def run(self, run: RunContext) -> None:
        config, data = run.config, run.data
        L.seed_everything(config.seed, workers=True, verbose=False)
        student = build_model(config, "student", data)
        objective = student_objective(config, data.tasks, student, run.teacher)
        objective.set_dataset_size(len(data.datasets["train"]))
        objective.set_class_counts(run.class_counts())
        views = student_views(config)
        if views is not None and config.data.augment is not None and views < config.training.student.epochs \
                and config.data.source != "embeddings":
            log.warning("data.views: %d: the KD student sees %d augmented view(s) per sample over %d epochs, so that "
                        "the teacher cache stays small; leave data.views unset for a fresh view every epoch",
                        views, views, config.training.student.epochs)
        run.stages[self.name] = fit.train_stage(self.name, config, config.training.student, student, objective, data,
                                                run.log, run.dir.checkpoint(self.name), teacher=run.teacher,
                                                views=views, last_path=run.dir.last_checkpoint(self.name))
        run.student = student
        if run.precomputed is not None:  # the student's representation, scored as the teacher's was
            ref = next((r for t in objective.terms for role, r in t.features() if role == "student"), "fused")
            samples = config.logging.probe_samples  # only the drawn train rows are embedded
            features = probe_features(student, data, config.training.student.batch_size, config.seed, samples, ref,
                                      config)
            run.results["probe"]["student"] = {"feature": ref, **probe_splits(features, data, config.seed, samples)}

    def restore(self, run: RunContext, record: dict) -> None:
        """The record, and the student's best weights for the report and compress stages."""
        super().restore(run, record)
        L.seed_everything(run.config.seed, workers=True, verbose=False)
        run.student = build_model(run.config, "student", run.data)
        load_weights(run.student, run.dir.checkpoint(self.name), "student checkpoint")
