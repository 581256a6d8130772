"""Stage 3, the baseline student: the same student architecture, seed and training settings on
the supervised loss alone, so every result says what distillation bought. A run that differs
from an earlier one only in teacher or KD objective copies that run's baseline from the cache
(`cache/baselines.py`) instead of training it again.

Reads: nothing of the teacher. Writes: checkpoints/baseline_best.safetensors, its metrics.csv
rows (copied ones included); a trained baseline is stored in the cache.
"""

from __future__ import annotations

import time

import lightning as L

from mmdistill.cache.baselines import baseline_entry, copy_baseline, store_baseline, training_lock
from mmdistill.models.build import build_model
from mmdistill.run.context import RunContext
from mmdistill.run.stages import Stage
from mmdistill.train import fit
from mmdistill.train.fit import StageResult


class BaselineStage(Stage):
    name = "baseline"

    def run(self, run: RunContext) -> None:
        L.seed_everything(run.config.seed, workers=True, verbose=False)
        if not run.config.cache.baseline:
            run.stages[self.name] = self._train(run)
            return
        start = time.perf_counter()
        entry, key = baseline_entry(run.config, run.data)
        result = self._copied(run, entry, key, start)
        if result is None:
            with training_lock(entry):  # a run of the same seed training it now: wait, then copy
                result = self._copied(run, entry, key, start)
                if result is None:
                    result = self._train(run)
                    rows = [r for r in run.log.rows if r["stage"] == self.name]
                    store_baseline(entry, key, {"dev": result.dev, "test": result.test, "best_epoch": result.best_epoch,
                                                "seconds": result.seconds}, rows, run.dir.checkpoint(self.name))
        run.stages[self.name] = result

    def _copied(self, run: RunContext, entry, key: str, start: float) -> StageResult | None:
        """The cached baseline of this student, data and seed, copied into the run; its
        `seconds` is the lookup and copy time (the training time is in its rows)."""
        stored = copy_baseline(entry, key, run.dir.checkpoint(self.name))
        if stored is None:
            return None
        for row in stored["rows"]:
            run.log.append(row)
        return StageResult(dev=stored["dev"], test=stored["test"], best_epoch=stored["best_epoch"],
                           seconds=time.perf_counter() - start, reused_from=stored["entry"])

    def _train(self, run: RunContext) -> StageResult:
        baseline = build_model(run.config, "student", run.data)
        settings = run.config.training.student.model_copy(update={"resume_from": None})  # that is the KD student's
        return fit.train_stage(self.name, run.config, settings, baseline, run.supervised(baseline), run.data, run.log,
                               run.dir.checkpoint(self.name), last_path=run.dir.last_checkpoint(self.name))
