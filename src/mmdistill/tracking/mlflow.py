"""MLflow: one run per mmdistill run (its config as parameters, results.json's numbers as
metrics, plots and results.json as artifacts), a child run per training stage with the epoch
metrics, and, in a sweep, the sweep's own run as the parent of every run (`sweep.py`), each
tagged with its variant and seed so the MLflow UI compares variants directly.

The default store is local files under output_dir (`<output_dir>/mlruns`, what `mlflow ui
--backend-store-uri <output_dir>/mlruns` opens); MLflow 3 keeps that store in maintenance mode
and asks for an explicit opt-in (MLFLOW_ALLOW_FILE_STORE), which choosing it here gives.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from mmdistill.tracking.base import TRACKERS, Tracker

PARENT_TAG = "mlflow.parentRunId"
BATCH = 500


def tracking_uri(config: Any) -> str:
    uri = config.logging.mlflow.tracking_uri
    if uri is None:
        uri = (Path(config.output_dir).resolve() / "mlruns").as_uri()
    if uri.startswith("file:") or "://" not in uri:
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    return uri


def experiment_name(config: Any) -> str:
    return config.logging.mlflow.experiment or config.experiment_name


def mlflow_logger(config: Any, run_name: str, tags: dict[str, str], run_id: str | None) -> Any:
    """Lightning's MLFlowLogger on run `run_id` (a new run when None), its experiment created on
    first use; two sweep workers creating it at once both end up in the one that won."""
    from lightning.pytorch.loggers import MLFlowLogger
    from mlflow.tracking import MlflowClient

    uri, name = tracking_uri(config), experiment_name(config)
    client = MlflowClient(uri)
    if client.get_experiment_by_name(name) is None:
        try:
            client.create_experiment(name)
        except Exception:  # noqa: BLE001 - another worker created it first
            if client.get_experiment_by_name(name) is None:
                raise
    logger = MLFlowLogger(experiment_name=name, tracking_uri=uri, run_name=run_name, tags=tags, run_id=run_id)
    logger.experiment  # the run is created (or found) now, so its id can be kept
    return logger


@TRACKERS.register("mlflow")
class MlflowTracker(Tracker):
    name = "mlflow"
    package = "mlflow"
    extra = "mlflow"

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._run: Any = None
        self._children: dict[str, Any] = {}
        self._tags: dict[str, str] = {}

    def start(self, params: dict[str, Any], tags: dict[str, str]) -> None:
        self._tags = dict(tags)
        run_tags = dict(tags)
        parent = self.config.logging.mlflow.parent_run_id
        if parent:
            run_tags[PARENT_TAG] = parent
        self._run = mlflow_logger(self.config, self.run_name, run_tags, self.state.get("run"))
        self.state["run"] = self._run.run_id
        self._run.log_hyperparams(params)

    def _child(self, stage: str) -> Any:
        if stage not in self._children:
            known = self.state.setdefault("stages", {})
            tags = {**self._tags, "stage": stage, PARENT_TAG: self._run.run_id}
            self._children[stage] = mlflow_logger(self.config, f"{self.run_name}/{stage}", tags, known.get(stage))
            known[stage] = self._children[stage].run_id
        return self._children[stage]

    def log_epoch(self, stage: str, epoch: int, metrics: dict[str, float]) -> None:
        self._child(stage).log_metrics(metrics, step=epoch)

    def end_stage(self, stage: str, metrics: dict[str, float]) -> None:
        if stage in self._children or stage in self.state.get("stages", {}):
            child = self._child(stage)
            child.log_metrics(metrics)
            child.finalize("success")
            self._children.pop(stage)

    def log_results(self, metrics: dict[str, float], artifacts: list[Path]) -> None:
        items = list(metrics.items())
        for start in range(0, len(items), BATCH):  # MLflow takes at most 1000 metrics per call
            self._run.log_metrics(dict(items[start:start + BATCH]))
        client, run_id = self._run.experiment, self._run.run_id
        for path in artifacts:
            if path.is_dir():
                client.log_artifacts(run_id, str(path), path.name)
            else:
                client.log_artifact(run_id, str(path))

    def finish(self, status: str) -> None:
        for child in self._children.values():
            child.finalize(status)
        self._children.clear()
        if self._run is not None:
            self._run.finalize(status)
