"""Per-epoch bookkeeping of a run: metrics.csv rows and the best-on-dev weights.

Both are written as they happen (atomically), so an interrupted run keeps every finished
epoch's metrics and its best checkpoint so far.
"""

from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path
from typing import Any, Callable

import lightning as L

from mmdistill.config.monitor import monitor_value
from mmdistill.distributed import is_writer
from mmdistill.io import write_text_atomic
from mmdistill.models.checkpoints import save_weights


class MetricsLog:
    """All epochs of all stages of one run, rewritten to metrics.csv after every epoch."""

    FIRST = ["stage", "epoch", "train_loss", "dev_score", "dev_loss", "dev_accuracy"]

    def __init__(self, path: Path, on_row: Callable[[dict[str, Any]], None] | None = None):
        self.path = path
        self.rows: list[dict[str, Any]] = []
        self.on_row = on_row  # told each new row (the run's experiment trackers, tracking/)

    @classmethod
    def resume(cls, path: Path, on_row: Callable[[dict[str, Any]], None] | None = None) -> "MetricsLog":
        """The log of a run directory being resumed: its rows so far, read back."""
        log = cls(path, on_row)
        if path.is_file():
            with path.open(newline="") as fh:
                log.rows = [{k: v for k, v in row.items() if v != ""} for row in csv.DictReader(fh)]
        return log

    def append(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        self.write()
        if self.on_row is not None:
            self.on_row(row)

    def drop_stage(self, stage: str) -> None:
        """Forget a stage's rows (it starts again, or its resumed state brings them back)."""
        if any(r["stage"] == stage for r in self.rows):
            self.rows = [r for r in self.rows if r["stage"] != stage]
            self.write()

    def replace_stage(self, stage: str, rows: list[dict[str, Any]]) -> None:
        self.rows = [r for r in self.rows if r["stage"] != stage] + [dict(r) for r in rows]
        self.write()

    def write(self) -> None:
        if not is_writer():  # every rank keeps the rows; rank 0 writes them
            return
        columns = list(self.FIRST)
        for r in self.rows:
            columns += [k for k in r if k not in columns]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows(self.rows)
        write_text_atomic(self.path, buf.getvalue())


class EpochRecorder(L.Callback):
    """After each validation: log the epoch row, and save weights when the monitored dev metric
    (`training.<stage>.monitor`, `config/monitor.py`) improves on the best so far."""

    def __init__(self, stage: str, log: MetricsLog, best_path: Path, monitor: str = "dev_score",
                 mode: str = "max"):
        self.stage = stage
        self.metrics_log = log
        self.best_path = best_path
        self.monitor, self.mode = monitor, mode
        self.best_value: float | None = None
        self.best_epoch = -1
        self.best_dev: dict[str, Any] | None = None
        self._t0 = time.perf_counter()

    def state_dict(self) -> dict[str, Any]:
        """What a resumed stage needs to keep what was best, and its rows so far (a checkpoint
        resumed in another run directory brings them along)."""
        return {"best_value": self.best_value, "best_epoch": self.best_epoch, "best_dev": json.dumps(self.best_dev),
                "rows": json.dumps([r for r in self.metrics_log.rows if r["stage"] == self.stage])}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.metrics_log.replace_stage(self.stage, json.loads(state["rows"]))
        if self.best_path.is_file():  # resumed in its own run directory, whose best weights are there
            self.best_value, self.best_epoch = state["best_value"], state["best_epoch"]
            self.best_dev = json.loads(state["best_dev"])
        # else (a checkpoint from another run directory) the best is chosen among the epochs trained
        # here, whose weights this directory will hold

    def on_train_epoch_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._t0 = time.perf_counter()
        self._train_seconds = float("nan")

    def on_validation_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._train_seconds = time.perf_counter() - self._t0  # the epoch's training steps, without validation

    def on_validation_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if trainer.sanity_checking or module.dev_metrics is None:
            return
        dev = module.dev_metrics
        train = module.train_summary()
        row: dict[str, Any] = {"stage": self.stage, "epoch": trainer.current_epoch + 1,
                               "train_loss": round(train.pop("loss", float("nan")), 6),
                               "dev_score": round(dev["score"], 6), "dev_loss": round(dev["loss"], 6),
                               "dev_accuracy": round(dev["accuracy"], 6)}
        row.update({f"train_{k}": round(v, 6) for k, v in train.items()})
        row.update({f"dev_{t}_f1": round(m["f1"], 6) for t, m in dev["tasks"].items()})
        row["lr"] = trainer.optimizers[0].param_groups[0]["lr"]
        row["seconds"] = round(time.perf_counter() - self._t0, 3)
        row["train_seconds"] = round(self._train_seconds, 3) if self._train_seconds == self._train_seconds else ""
        self.metrics_log.append(row)
        value = monitor_value(self.monitor, dev, [t.name for t in module.model.tasks])
        if self._improves(value):
            self.best_value, self.best_epoch, self.best_dev = value, row["epoch"], dev
            if is_writer():
                save_weights(module.model, self.best_path)

    def _improves(self, value: float | None) -> bool:
        """Strictly better than the best so far; the first epoch always counts, so a stage always
        has a best checkpoint (an undefined value, e.g. an AUROC on one class, never improves)."""
        if self.best_epoch < 0:
            return True
        if value is None or value != value:
            return False
        if self.best_value is None:
            return True
        return value > self.best_value if self.mode == "max" else value < self.best_value
