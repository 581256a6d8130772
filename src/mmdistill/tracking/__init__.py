"""Experiment trackers: where a run's numbers go besides its own directory, chosen by name in
`logging.trackers`.

    csv          metrics.csv in the run directory (always written: resume and the report read it)
    tensorboard  <run dir>/tensorboard/<stage>/: one TensorBoard run per stage, and <run dir>/
                 tensorboard/run/ with the config and final results (the HPARAMS tab compares runs)
    mlflow       one MLflow run per mmdistill run, a child run per training stage; a sweep is the
                 parent of its runs, tagged with variant and seed (`sweep.py`)
    wandb        one W&B run per mmdistill run, offline by default, grouped by sweep

Each tracker (`base.Tracker`) wraps Lightning's logger for its service. Trackers are fed the
rows metrics.csv gets (`train/recorder.py`), not Lightning's `self.log`, so every tracker holds
exactly the numbers metrics.csv holds. Only global rank 0 tracks. A tracker whose package is
missing stops the run before any training (exit 2, naming the pip extra); one that fails
mid-run (a server gone) is dropped with a warning, and the run and metrics.csv go on.
"""

from mmdistill.tracking.base import TRACKERS, RunTrackers, Tracker, check_trackers
from mmdistill.tracking import mlflow as _mlflow  # noqa: F401 - registers the tracker
from mmdistill.tracking import simple as _simple  # noqa: F401 - registers csv and tensorboard
from mmdistill.tracking import wandb as _wandb  # noqa: F401 - registers the tracker

__all__ = ["TRACKERS", "RunTrackers", "Tracker", "check_trackers"]
