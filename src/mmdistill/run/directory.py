"""A run directory: what a run writes, where, and who writes it.

    <output_dir>/<experiment_name>/      (a sweep: <sweep>/<variant>/seed_<n>/)
      config.yaml      the resolved config              (written first)
      metrics.csv      one row per epoch per stage      (train/recorder.py, after every epoch)
      checkpoints/     <stage>_best.safetensors         (the best-on-dev weights of each stage)
      confusion/       <stage>_<task>_{dev,test}.npy
      plots/           curves, per-stage curves, confusion matrices, t-SNE / UMAP maps
      results.json     everything measured              (written last)

Every file is written whole or not at all (`io.atomic_path`). Which process writes the run's
files is decided in one place, `is_writer`: the process of global rank 0 (the only one when
Lightning runs on one device); the directory itself, config.yaml, the confusion matrices,
plots and results.json are written through it.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from mmdistill.errors import UserError
from mmdistill.io import atomic_path, write_json_atomic, write_text_atomic

RESULTS = "results.json"
SUBDIRS = ("checkpoints", "confusion", "plots")


def is_writer() -> bool:
    """Whether this process writes the run's files: global rank 0, as Lightning numbers them."""
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    return getattr(rank_zero_only, "rank", 0) == 0


class RunDirectory:
    def __init__(self, path: Path):
        self.path = Path(path)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    @property
    def results(self) -> Path:
        return self.path / RESULTS

    def checkpoint(self, stage: str) -> Path:
        return self.path / "checkpoints" / f"{stage}_best.safetensors"

    def prepare(self, overwrite: bool) -> "RunDirectory":
        """An empty directory to write into: a finished run is replaced only with `overwrite`."""
        if self.results.exists() and not overwrite:
            raise UserError(f"{self.path}: a finished run is already there; pass --overwrite to replace it "
                            "or choose another experiment_name/output_dir")
        if is_writer():
            if overwrite and self.path.exists():
                shutil.rmtree(self.path)
            for sub in SUBDIRS:
                (self.path / sub).mkdir(parents=True, exist_ok=True)
        return self

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
