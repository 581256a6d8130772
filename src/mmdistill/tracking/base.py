"""The tracker interface, the registry of trackers, and `RunTrackers`, the one object a run
talks to (it fans every call out to the configured trackers and keeps what a resumed run needs
to continue the same tracker runs)."""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path
from typing import Any, ClassVar

from mmdistill.distributed import is_writer
from mmdistill.errors import UserError
from mmdistill.io import write_json_atomic
from mmdistill.registry import Registry
from mmdistill.tracking.flatten import config_params, result_metrics, row_metrics

logger = logging.getLogger(__name__)

STATE_FILE = "trackers.json"  # in the run directory: each tracker's run ids, so a resumed run continues them
NOT_METRICS = ("image_stats", "embedding_dims", "seed")  # results.json's numbers that describe, not measure
ARTIFACTS = ("results.json", "config.yaml", "metrics.csv", "compress.md", "plots")


class Tracker:
    """One tracker's side of one run. `state` is what it saved for this run before (its run
    ids), empty for a new run; `saved()` is what to keep now."""

    name: ClassVar[str]
    package: ClassVar[str | None] = None  # the module it needs
    extra: ClassVar[str | None] = None    # the pip extra that installs it

    def __init__(self, config: Any, run_dir: Path, run_name: str, state: dict[str, Any]):
        self.config, self.run_dir, self.run_name, self.state = config, Path(run_dir), run_name, dict(state)

    def start(self, params: dict[str, Any], tags: dict[str, str]) -> None:
        """The run begins (or resumes): its config as parameters, its tags."""

    def log_epoch(self, stage: str, epoch: int, metrics: dict[str, float]) -> None:
        """One metrics.csv row of a training stage."""

    def end_stage(self, stage: str, metrics: dict[str, float]) -> None:
        """A stage finished: its final dev/test numbers."""

    def log_results(self, metrics: dict[str, float], artifacts: list[Path]) -> None:
        """results.json's numbers, and the files a researcher opens (plots, results.json, compress.md)."""

    def finish(self, status: str) -> None:
        """`success`, `failed` or `killed` (interrupted)."""

    def saved(self) -> dict[str, Any]:
        return self.state


TRACKERS: Registry[type[Tracker]] = Registry("tracker")


def check_trackers(config: Any) -> None:
    """Unknown names and missing packages, before anything runs (exit 2 names the pip extra)."""
    for index, name in enumerate(config.logging.trackers):
        tracker = TRACKERS.get(name, f"logging.trackers[{index}]")
        if tracker.package and importlib.util.find_spec(tracker.package) is None:
            raise UserError(f"logging.trackers[{index}]: the {name} tracker needs the {tracker.package} package, "
                            f"which is not installed: pip install 'mmdistill[{tracker.extra}]'")


def run_name(config: Any, run_dir: Path) -> str:
    """How trackers list the run: its directory below output_dir (`demo`, `sweep/kd/seed_42`)."""
    try:
        return Path(run_dir).resolve().relative_to(Path(config.output_dir).resolve()).as_posix()
    except ValueError:
        return Path(run_dir).name


class RunTrackers:
    """Every configured tracker of one run. A tracker that raises is dropped with a warning
    (a tracking server that goes away must not end a day of training)."""

    def __init__(self, trackers: list[Tracker] | None = None, state_path: Path | None = None):
        self.trackers = trackers or []
        self.state_path = state_path

    @classmethod
    def open(cls, config: Any, run_dir: Path, resumed: bool) -> "RunTrackers":
        """The run's trackers; a resumed run continues the tracker runs it started before."""
        names = [n for n in config.logging.trackers if n != "csv"]
        if not names or not is_writer():
            return cls()
        path = Path(run_dir) / STATE_FILE
        state: dict[str, Any] = {}
        if resumed and path.is_file():
            try:
                state = json.loads(path.read_text())
            except ValueError:
                state = {}
        label = run_name(config, run_dir)
        trackers = [TRACKERS.get(n, "logging.trackers")(config, run_dir, label, state.get(n, {})) for n in names]
        return cls(trackers, path)

    def _each(self, method: str, *args: Any) -> None:
        for tracker in list(self.trackers):
            try:
                getattr(tracker, method)(*args)
            except Exception as exc:  # noqa: BLE001 - see the class docstring
                logger.warning("the %s tracker failed (%s: %s); the run goes on without it (metrics.csv has "
                               "every number)", tracker.name, type(exc).__name__, exc)
                self.trackers.remove(tracker)
        self._save()

    def _save(self) -> None:
        if self.state_path is not None and self.trackers:
            write_json_atomic(self.state_path, {t.name: t.saved() for t in self.trackers})

    def start(self, config: Any) -> None:
        if self.trackers:
            self._each("start", config_params(config.model_dump(mode="json")), dict(config.logging.tags))

    def log_row(self, row: dict[str, Any]) -> None:
        """A new metrics.csv row (MetricsLog calls this for each one it appends)."""
        if self.trackers:
            self._each("log_epoch", str(row["stage"]), int(row["epoch"]), row_metrics(row))

    def end_stage(self, stage: str, dev: dict[str, Any], test: dict[str, Any], best_epoch: int | None) -> None:
        if self.trackers:
            metrics = {**result_metrics({"dev": dev, "test": test})}
            if best_epoch is not None:
                metrics["best_epoch"] = float(best_epoch)
            self._each("end_stage", stage, metrics)

    @classmethod
    def update_finished(cls, run_dir: Path, results: dict[str, Any]) -> None:
        """A finished run changed after the fact (`mmdistill compress RUN_DIR` added its
        `compressed` entry and compress.md): its tracker runs get the new numbers and files."""
        import yaml

        from mmdistill.config.loading import validate_config

        path = Path(run_dir) / "config.yaml"
        config = validate_config(yaml.safe_load(path.read_text()), str(path))
        trackers = cls.open(config, run_dir, resumed=True)
        trackers.start(config)
        trackers.finish(results, run_dir)

    def finish(self, results: dict[str, Any] | None, run_dir: Path, status: str = "success") -> None:
        if not self.trackers:
            return
        if results is not None:
            files = [Path(run_dir) / name for name in ARTIFACTS if (Path(run_dir) / name).exists()]
            numbers = result_metrics({k: v for k, v in results.items() if k not in NOT_METRICS})
            self._each("log_results", numbers, files)
        self._each("finish", status)
