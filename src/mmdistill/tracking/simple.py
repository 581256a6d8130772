"""The trackers that are files in the run directory: csv (metrics.csv) and TensorBoard."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mmdistill.tracking.base import TRACKERS, Tracker


@TRACKERS.register("csv")
class CsvTracker(Tracker):
    """metrics.csv, which every run writes whatever `logging.trackers` says: resuming a stage
    and the report's curves read it (train/recorder.py). Listed for completeness."""

    name = "csv"


@TRACKERS.register("tensorboard")
class TensorBoardTracker(Tracker):
    """One TensorBoard run per stage (<run dir>/tensorboard/<stage>/), so the teacher's and the
    students' curves overlay under the same tag; the config and the final results go to
    tensorboard/run/ as hyperparameters and metrics, which the HPARAMS tab compares across the
    runs under a directory (`tensorboard --logdir <sweep dir>` compares a sweep's variants)."""

    name = "tensorboard"
    package = "tensorboard"
    extra = "tensorboard"

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._loggers: dict[str, Any] = {}
        self._params: dict[str, Any] = {}

    def _logger(self, version: str) -> Any:
        from lightning.pytorch.loggers import TensorBoardLogger

        if version not in self._loggers:
            self._loggers[version] = TensorBoardLogger(save_dir=str(self.run_dir), name="tensorboard",
                                                       version=version, default_hp_metric=False)
        return self._loggers[version]

    def start(self, params: dict[str, Any], tags: dict[str, str]) -> None:
        self._params = {**params, **{f"tag.{k}": v for k, v in tags.items()}}

    def log_epoch(self, stage: str, epoch: int, metrics: dict[str, float]) -> None:
        self._logger(stage).log_metrics(metrics, step=epoch)

    def end_stage(self, stage: str, metrics: dict[str, float]) -> None:
        if stage in self._loggers:
            self._loggers.pop(stage).finalize("success")

    def log_results(self, metrics: dict[str, float], artifacts: list[Path]) -> None:
        self._logger("run").log_hyperparams(self._params, metrics)

    def finish(self, status: str) -> None:
        for logger in self._loggers.values():
            logger.finalize(status)
        self._loggers.clear()
