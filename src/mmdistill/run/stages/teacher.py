"""Stage 1, the teacher: trained on the supervised loss, loaded from `teacher.checkpoint` and
only scored, or, when it is precomputed embeddings (seed 003), scored by linear and k-NN probes.

Reads: the config's teacher, the data. Writes: checkpoints/teacher_best.safetensors (when it
trains; teacher_last.ckpt while it does), its metrics.csv rows; the teacher's dev/test scores
go to the score cache. Its training is reseeded, so a teacher trained here is the one a sweep's
shared-teacher job trains, whatever student was built before it.
"""

from __future__ import annotations

import time

import lightning as L
import numpy as np

from mmdistill.cache.teacher_scores import read_teacher_scores, store_teacher_scores
from mmdistill.eval.probe import probe_splits
from mmdistill.models.checkpoints import load_weights
from mmdistill.run.context import RunContext
from mmdistill.run.stages import Stage
from mmdistill.train import fit
from mmdistill.train.fit import StageResult


class TeacherStage(Stage):
    name = "teacher"

    def run(self, run: RunContext) -> None:
        config, teacher = run.config, run.teacher
        if run.precomputed is not None:
            start = time.perf_counter()
            embeddings = {s: np.asarray(e[:, 0], dtype=np.float32) for s, e in run.precomputed.splits.items()}
            probe = probe_splits(embeddings, run.data, config.seed, config.logging.probe_samples)
            run.stages[self.name] = StageResult(probe["dev"], probe["test"], None, time.perf_counter() - start)
            run.results["probe"] = {"teacher": probe}
        elif config.teacher.checkpoint is not None:
            load_weights(teacher, config.teacher.checkpoint, "teacher.checkpoint")
            run.stages[self.name] = self._evaluate(run)
            run.results["teacher_checkpoint"] = str(config.teacher.checkpoint)
        else:
            L.seed_everything(config.seed, workers=True, verbose=False)  # whatever was built before it
            result = fit.train_stage(self.name, config, config.training.teacher, teacher, run.supervised(teacher),
                                     run.data, run.log, run.dir.checkpoint(self.name), views=None,
                                     last_path=run.dir.last_checkpoint(self.name))
            # what evaluating the loaded checkpoint gives: no dev loss, which is the training stage's
            scores = {k: v for k, v in result.dev.items() if k != "loss"}
            store_teacher_scores(config, teacher, run.data, scores, result.test)
            run.stages[self.name] = result

    def restore(self, run: RunContext, record: dict) -> None:
        """The record, and the teacher's weights for the stages that read it."""
        super().restore(run, record)
        if run.precomputed is None:
            checkpoint = run.config.teacher.checkpoint or run.dir.checkpoint(self.name)
            load_weights(run.teacher, checkpoint, "teacher checkpoint")

    @staticmethod
    def _evaluate(run: RunContext) -> StageResult:
        """A loaded teacher's dev/test metrics, from the score cache when it holds them for these
        weights and data (`seconds` is then the lookup time), otherwise computed and stored."""
        start = time.perf_counter()
        stored, path = read_teacher_scores(run.config, run.teacher, run.data)
        if stored is not None:
            return StageResult(dev=stored["dev"], test=stored["test"], best_epoch=None,
                               seconds=time.perf_counter() - start, reused_from=str(path))
        result = fit.evaluate_only(run.teacher, run.data, run.config.training.teacher.batch_size, run.config)
        store_teacher_scores(run.config, run.teacher, run.data, result.dev, result.test)
        return result
