"""A sweep in MLflow: one run for the sweep itself, the parent of every run and shared teacher
it trains (their own runs are tagged with variant and seed by the sweep's plan), holding the
aggregated results and the report once the sweep is done. Its id is kept in <sweep dir>/
trackers.json, so re-running the sweep files the remaining runs under the same parent."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mmdistill.io import write_json_atomic
from mmdistill.tracking.base import STATE_FILE
from mmdistill.tracking.mlflow import PARENT_TAG, mlflow_logger

ARTIFACTS = ("aggregated_results.json", "report.md", "report.html", "best_config.yaml")
SUMMARY = ("student.test.score", "baseline.test.score", "teacher.test.score")  # with the tuned metric


class SweepTracking:
    def __init__(self, logger: Any):
        self.logger = logger

    @classmethod
    def open(cls, sweep_dir: Path, experiment: str, jobs: list[Any]) -> "SweepTracking | None":
        """The sweep's MLflow run when any of its runs tracks to MLflow (None otherwise); every
        such job that names no parent of its own is nested under it."""
        from mmdistill.config.schema import ExperimentConfig

        tracked = [job for job in jobs if "mlflow" in job.config["logging"]["trackers"]]
        if not tracked:
            return None
        config = ExperimentConfig.model_validate(tracked[0].config)
        path = Path(sweep_dir) / STATE_FILE
        try:
            state = json.loads(path.read_text())
        except (OSError, ValueError):
            state = {}
        tags = {"sweep": experiment, "kind": "sweep"}
        if config.logging.mlflow.parent_run_id:
            tags[PARENT_TAG] = config.logging.mlflow.parent_run_id
        logger = mlflow_logger(config, f"sweep {experiment}", tags, state.get("mlflow"))
        write_json_atomic(path, {"mlflow": logger.run_id})
        for job in tracked:
            spec = job.config["logging"]["mlflow"]
            spec["parent_run_id"] = spec.get("parent_run_id") or logger.run_id
        return cls(logger)

    def finish(self, sweep_dir: Path, status: str) -> None:
        """Each variant's mean and std of the tuned metric and the test scores, and the report."""
        try:
            aggregated = json.loads((Path(sweep_dir) / ARTIFACTS[0]).read_text())
        except (OSError, ValueError):
            aggregated = {}
        keys = (aggregated.get("tune", {}).get("metric"), *SUMMARY)
        metrics = {}
        for variant, entry in aggregated.get("variants", {}).items():
            for key in dict.fromkeys(k for k in keys if k):
                stat = entry.get("metrics", {}).get(key) or {}
                metrics.update({f"{variant}/{key}/{s}": stat[s] for s in ("mean", "std") if stat.get(s) is not None})
        if metrics:
            self.logger.log_metrics(metrics)
        for name in ARTIFACTS:
            if (Path(sweep_dir) / name).is_file():
                self.logger.experiment.log_artifact(self.logger.run_id, str(Path(sweep_dir) / name))
        self.logger.finalize(status)
