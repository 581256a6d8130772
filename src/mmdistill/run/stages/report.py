"""The report: what the run measured, as files a researcher opens.

Reads: every earlier stage's results and models, metrics.csv. Writes:
confusion/<stage>_<task>_{dev,test}.npy (and their plots), plots/curves.png, plots/<stage>_training_curves.png, plots/{tsne,umap}_<role>.png,
and results.json, last: a run with results.json is a finished run.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from mmdistill.config.hashing import config_hash, teacher_hash
from mmdistill.data.stats import image_stats
from mmdistill.eval.embeddings import write_run_plots
from mmdistill.eval.plots import plot_confusion, plot_curves, plot_stage_curves
from mmdistill.run.context import RunContext
from mmdistill.distributed import is_writer
from mmdistill.run.stages import Stage
from mmdistill.train.fit import StageResult


def stage_entry(result: StageResult) -> dict[str, Any]:
    """A stage's results.json entry: dev and test metrics without the confusion matrices
    (those are files of their own), the best epoch, and the cache entry it was copied from."""
    strip = lambda m: {**{k: v for k, v in m.items() if k != "tasks"},
                       "tasks": {t: {k: v for k, v in tm.items() if k != "confusion_matrix"} for t, tm in m["tasks"].items()}}
    entry = {"dev": strip(result.dev), "test": strip(result.test), "best_epoch": result.best_epoch}
    return entry | ({"reused_from": result.reused_from} if result.reused_from else {})


class ReportStage(Stage):
    name = "report"

    def finished(self, run: RunContext) -> dict | None:
        """results.json, when it is this run's (an older config's or data's is written again)."""
        results = run.dir.results_if_finished()
        if results is None or results.get("config_hash") != self._config_hash(run) \
                or results.get("data_signature") != run.data_signature:
            return None
        return {"results": results}

    @staticmethod
    def _config_hash(run: RunContext) -> str:
        # what a sweep compares to decide whether this run is finished (config/hashing.py)
        return teacher_hash(run.config) if run.teacher_only else config_hash(run.config)

    def run_and_record(self, run: RunContext) -> None:
        self.run(run)  # results.json is its record

    def restore(self, run: RunContext, record: dict) -> None:
        run.results = record["results"]

    def run(self, run: RunContext) -> None:
        config, results = run.config, run.results
        timing: dict[str, float] = {}
        for name, result in run.stages.items():
            results[name] = stage_entry(result)
            timing[name] = round(result.seconds, 3)
            for split in ("dev", "test"):
                self._confusions(run, name, split, getattr(result, split))
        timing["total"] = round(time.perf_counter() - run.started, 3)
        results["timing"] = timing
        results["params"] = {"teacher": run.teacher.num_parameters() if run.precomputed is None else None}
        if run.student is not None:
            results["params"]["student"] = run.student.num_parameters()
        results["tasks"] = {t.name: {"type": t.type, "classes": list(t.classes)} for t in run.data.tasks}
        results["samples"] = {split: len(ds) for split, ds in run.data.datasets.items()}
        # how the inputs were prepared, what a deployed model must repeat (models/card.py): each image
        # modality's mean/std and quantisation levels, each embedding's size
        stats = image_stats(run.data.modalities)
        for name, levels in run.data.datasets["test"].image_levels().items():
            if name in stats:
                stats[name]["levels"] = levels
        results["image_stats"] = stats
        results["embedding_dims"] = dict(run.data.embedding_dims)
        results["data_signature"] = run.data_signature  # a sweep re-runs this run when its data changes
        if config.logging.plots and is_writer():
            self._plots(run)
        results["config_hash"] = self._config_hash(run)
        results["identity"] = run.dir.identity  # the teacher checkpoint's content and the version, too
        run.dir.write_results(results)

    @staticmethod
    def _confusions(run: RunContext, stage: str, split: str, metrics: dict[str, Any]) -> None:
        for task, m in metrics["tasks"].items():
            if "confusion_matrix" not in m:  # probe scores of a precomputed teacher; a copied stage's dev
                continue
            matrix = np.asarray(m["confusion_matrix"], dtype=np.int64)
            run.dir.write_array(f"confusion/{stage}_{task}_{split}.npy", matrix)
            if run.config.logging.plots and is_writer():
                plot_confusion(matrix, m["classes"], f"{stage} / {task} ({split})",
                               run.dir / f"plots/confusion_{stage}_{task}_{split}.png")

    @staticmethod
    def _plots(run: RunContext) -> None:
        if run.log.rows:
            plot_curves(run.log.rows, run.dir / "plots/curves.png")
            plot_stage_curves(run.log.rows, run.dir / "plots")
        # seed 002's t-SNE / UMAP of each model's fused test vectors: of the same `plot_samples`
        # test rows for every model, drawn by the run's seed (only those rows are embedded)
        roles = {"teacher": None if run.precomputed is not None else run.teacher, "student": run.student}
        write_run_plots(run.dir.path, {r: m for r, m in roles.items() if m is not None}, run.data,
                        batch_size=run.config.training.student.batch_size, config=run.config,
                        samples=run.config.logging.plot_samples, seed=run.config.seed)
