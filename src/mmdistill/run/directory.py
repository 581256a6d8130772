"""A run directory: what a run writes, where, and who writes it.

    <output_dir>/<experiment_name>/      (a sweep: <sweep>/<variant>/seed_<n>/)
      config.yaml      the resolved config              (written first)
      metrics.csv      one row per epoch per stage      (train/recorder.py, after every epoch)
      checkpoints/     <stage>_best.safetensors         (the best-on-dev weights of each stage)
      confusion/       <stage>_<task>_{dev,test}.npy
      plots/           curves, per-stage curves, confusion matrices, t-SNE / UMAP maps
      stages/          <stage>.json: a finished stage's results (written as it ends)
      run.json         the marker: this is a run, and which one (its identity)
      results.json     everything measured              (written last)

A re-run of the same command finds the marker with the same identity (`config/hashing.
run_identity`: the config, the teacher checkpoint's content, the mmdistill version) and
resumes: finished stages are read back, an interrupted one continues from its last checkpoint.
Another identity is refused, naming the keys that differ, unless --overwrite, which deletes
only a directory that carries a marker (or a run of an older mmdistill: `_legacy`).

Every file is written whole or not at all (`io.atomic_path`). Which process writes the run's
files is decided in one place, `distributed.is_writer`: the process of global rank 0 (the only one when
Lightning runs on one device); the directory itself, config.yaml, the confusion matrices,
plots and results.json are written through it.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from mmdistill.config.hashing import differing_keys, run_identity
from mmdistill.distributed import is_writer, may_run_on_several, session
from mmdistill.errors import UserError
from mmdistill.io import atomic_path, write_json_atomic, write_text_atomic

RESULTS = "results.json"
MARKER = "run.json"
SESSION = "session.json"  # rank 0's decision for this launch (a run on several processes)
FOLLOW_TIMEOUT_S = 900
SUBDIRS = ("checkpoints", "confusion", "plots", "stages")
# every name a run (and `compress`, `report`, a sweep job's failure) writes at its top level:
# a directory holding anything else is not deleted by --overwrite
RUN_FILES = {*SUBDIRS, MARKER, RESULTS, "config.yaml", "metrics.csv", "error.log", "compressed", "compress.md",
             "report.md", "report.html", "report_files", "tensorboard", "mlruns", "wandb", "trackers.json", SESSION}
# files only mmdistill leaves at a run's top level: config.yaml (an older run, once its caches were
# attached), results.json (a finished run), error.log (a sweep job that failed before preparing one)
UNMARKED_RUN_FILES = ("config.yaml", RESULTS, "error.log")


class RunDirectory:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.identity: dict[str, Any] = {}  # set by prepare

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    @property
    def results(self) -> Path:
        return self.path / RESULTS

    def checkpoint(self, stage: str) -> Path:
        return self.path / "checkpoints" / f"{stage}_best.safetensors"

    def prepare(self, config: Any, overwrite: bool = False, replace_changed: bool = False,
                data_signature: str | None = None) -> bool:
        """Ready to write this run; True when it resumes (the directory holds this run already).
        A directory of another run is refused unless `overwrite` (or, for a sweep's job, whose
        config is the plan's, `replace_changed`); one that is not a run is never touched."""
        identity = run_identity(config, data_signature)
        self.identity = identity
        if not is_writer():  # another rank of this run: rank 0 decides, this one follows
            return self._follow()
        resumed = False
        if self.path.is_dir() and any(self.path.iterdir()):
            marker = self._read(MARKER)
            if marker is None and not self._legacy():
                raise UserError(f"{self.path}: not an mmdistill run directory (no {MARKER}); nothing in it is touched: "
                                "choose another experiment_name or output_dir")
            same = marker is not None and marker.get("identity") == identity
            if overwrite or (replace_changed and not same):
                if is_writer():
                    shutil.rmtree(self.path)
            elif same:
                resumed = True
            else:
                raise UserError(f"{self.path}: {self._why_different(config, marker, identity)}; pass --overwrite to replace it, "
                                "or choose another experiment_name or output_dir")
        if is_writer():
            for sub in SUBDIRS:
                (self.path / sub).mkdir(parents=True, exist_ok=True)
            if not resumed:
                from mmdistill import __version__

                write_json_atomic(self.path / MARKER, {"identity": identity, "mmdistill": __version__,
                                                        "created": time.strftime("%Y-%m-%d %H:%M:%S")})
            if may_run_on_several(config):
                write_json_atomic(self.path / SESSION, {"session": session(), "resumed": resumed})
        return resumed

    def _follow(self) -> bool:
        """Wait for rank 0 to have prepared the directory for this launch, and take its answer
        (resumed or not): under srun every rank starts at once, and one that looked for itself
        could see rank 0's directory half made, or half deleted by --overwrite."""
        mine, deadline = session(), time.monotonic() + FOLLOW_TIMEOUT_S
        while time.monotonic() < deadline:
            record = self._read(SESSION)
            if record is not None and record.get("session") == mine:
                return bool(record.get("resumed"))
            time.sleep(0.5)
        raise RuntimeError(f"{self.path}: rank 0 did not prepare the run directory within {FOLLOW_TIMEOUT_S} s")

    def _read(self, name: str) -> Any:
        try:
            return json.loads((self.path / name).read_text())
        except (OSError, ValueError):
            return None

    def _legacy(self) -> bool:
        """A run written before run markers existed: nothing in it but what runs write, and a
        file only a run writes there, or only the empty folders an older run made before it was
        killed. Names alone are not enough: a folder holding just `plots/` or `checkpoints/` of
        someone's own is not a run, and --overwrite leaves it."""
        entries = list(self.path.iterdir())
        if not all(entry.name in RUN_FILES for entry in entries):
            return False
        return any((self.path / name).is_file() for name in UNMARKED_RUN_FILES) or \
            all(entry.is_dir() and not any(entry.iterdir()) for entry in entries)

    def _why_different(self, config: Any, marker: dict | None, identity: dict) -> str:
        try:
            old = yaml.safe_load((self.path / "config.yaml").read_text())
        except (OSError, yaml.YAMLError):
            old = None
        if marker is None:
            return "a run of an older mmdistill is already there"
        keys = [k for k in differing_keys(old, config.model_dump(mode="json"))
                if k.split(".")[0] not in ("output_dir", "experiment_name")] if isinstance(old, dict) else []
        if keys:
            shown = ", ".join(keys[:5]) + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")
            return f"it holds a run of another config ({shown} differ)"
        what = {"data": "the data (a record, label or image file)", "teacher_checkpoint": "the teacher checkpoint's "
                "content", "mmdistill": "the mmdistill version", "config": "the config"}
        changed = [what[k] for k in what if (marker.get("identity") or {}).get(k) != identity.get(k)]
        return f"it holds a run of the same config, but {' and '.join(changed) or 'its identity'} changed since"

    # ---------------------------------------------------------------- stage records
    def stage_record(self, stage: str) -> dict[str, Any] | None:
        """A finished stage's record, when this run got that far before."""
        return self._read(f"stages/{stage}.json")

    def write_stage_record(self, stage: str, record: dict[str, Any]) -> None:
        if is_writer():
            write_json_atomic(self.path / "stages" / f"{stage}.json", record)

    def last_checkpoint(self, stage: str) -> Path:
        return self.path / "checkpoints" / f"{stage}_last.ckpt"

    def drop_last_checkpoint(self, stage: str) -> None:
        if is_writer():
            self.last_checkpoint(stage).unlink(missing_ok=True)

    def results_if_finished(self) -> dict[str, Any] | None:
        return self._read(RESULTS)

    def write_config(self, config: Any) -> None:
        if is_writer():
            write_text_atomic(self.path / "config.yaml",
                              yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))

    def write_results(self, results: dict[str, Any]) -> None:
        if is_writer():
            write_json_atomic(self.results, results)

    def write_array(self, relative: str, array: np.ndarray) -> Path:
        path = self.path / relative
        if is_writer():
            with atomic_path(path) as tmp, open(tmp, "wb") as fh:
                np.save(fh, array)
        return path
