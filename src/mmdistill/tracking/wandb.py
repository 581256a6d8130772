"""Weights & Biases: one W&B run per mmdistill run, its config as the run config, each stage's
epochs as `<stage>/<metric>` against `<stage>/epoch`, results.json's numbers as the summary,
and plots and results.json as an artifact; a sweep's runs share its name as their group.

Offline by default (`logging.wandb.mode`): the run is written under <run dir>/wandb and
uploaded later with `wandb sync`, so a run on a node without network works unchanged.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from mmdistill.tracking.base import TRACKERS, Tracker


@TRACKERS.register("wandb")
class WandbTracker(Tracker):
    name = "wandb"
    package = "wandb"
    extra = "wandb"

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._logger: Any = None
        self._stages: set[str] = set()

    def start(self, params: dict[str, Any], tags: dict[str, str]) -> None:
        import wandb
        from lightning.pytorch.loggers import WandbLogger

        spec = self.config.logging.wandb
        os.environ.setdefault("WANDB_SILENT", "true")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        run = wandb.init(name=self.run_name, dir=str(self.run_dir), id=self.state.get("id"), resume="allow",
                         project=spec.project or self.config.experiment_name, entity=spec.entity, mode=spec.mode,
                         group=tags.get("sweep"), config=params, tags=[f"{k}:{v}"[:64] for k, v in tags.items()],
                         reinit="finish_previous")
        self._logger = WandbLogger(experiment=run)
        self.state["id"] = run.id

    def log_epoch(self, stage: str, epoch: int, metrics: dict[str, float]) -> None:
        run = self._logger.experiment
        if stage not in self._stages:
            run.define_metric(f"{stage}/epoch")
            run.define_metric(f"{stage}/*", step_metric=f"{stage}/epoch")
            self._stages.add(stage)
        run.log({f"{stage}/epoch": epoch, **{f"{stage}/{k}": v for k, v in metrics.items()}})

    def end_stage(self, stage: str, metrics: dict[str, float]) -> None:
        self._logger.experiment.summary.update({f"{stage}/final/{k}": v for k, v in metrics.items()})

    def log_results(self, metrics: dict[str, float], artifacts: list[Path]) -> None:
        import wandb

        run = self._logger.experiment
        run.summary.update(metrics)
        artifact = wandb.Artifact(f"run-{run.id}", type="mmdistill-run")
        for path in artifacts:
            (artifact.add_dir if path.is_dir() else artifact.add_file)(str(path), name=path.name)
        run.log_artifact(artifact)

    def finish(self, status: str) -> None:
        if self._logger is not None:
            self._logger.experiment.finish(exit_code=0 if status == "success" else 1)
            self._logger = None
