"""Resuming a stage where it stopped: a "last" checkpoint kept as training goes, and the state
a resumed stage needs to continue exactly as if it had never stopped.

`LastCheckpoint` writes `<stage>_last.ckpt` at the end of an epoch (model, optimizer, schedule,
epoch, early stopping, and the callbacks' states below), atomically, as often as it can while
costing at most `budget` (5%) of the training time: it saves only once the epochs since the
last save took at least 1 / budget times as long as a save takes (before the first save, as
long as writing the model and its optimizer state at `WRITE_BYTES_PER_S` would take; after
it, as long as the last save took). A killed job loses at most that much work; re-running the
same command continues from it (`train/fit.py`); `benchmarks/checkpoint_cost.py` measures the
cost.

`ResumeState` carries what Lightning's checkpoint leaves out and a bit-identical continuation
needs: the global random states (torch CPU and CUDA, numpy, Python: dropout, masking, negative sampling)
and the train sampler's generator (the shuffle order of the next epochs), captured when the
checkpoint is written and put back when training resumes.
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch


WRITE_BYTES_PER_S = 100e6  # a cautious disk: the first save's cost is estimated from it


class LastCheckpoint(L.Callback):
    def __init__(self, path: Path, budget: float = 0.05):
        self.path = Path(path)
        self.budget = budget
        self._since = 0.0          # training seconds since the last save
        self._save_cost: float | None = None
        self._epoch_start = time.perf_counter()
        self.saves: list[float] = []  # seconds each save took (what the cost benchmark reads)

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        """Before any save is timed: the weights, and Adam's two moments of each trained one."""
        state_bytes = sum(p.numel() * p.element_size() * (3 if p.requires_grad else 1) for p in module.parameters())
        self._save_cost = state_bytes / WRITE_BYTES_PER_S

    def on_train_epoch_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._epoch_start = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._since += time.perf_counter() - self._epoch_start
        last_epoch = trainer.current_epoch + 1 >= trainer.max_epochs
        if last_epoch or trainer.should_stop:
            return  # the stage is about to finish: its record, not this file, is what a re-run needs
        due = self._save_cost is None or self._since * self.budget >= self._save_cost
        # every rank must agree (saving waits for all of them), and only rank 0's clock decides
        if not trainer.strategy.broadcast(due, src=0):
            return
        start = time.perf_counter()
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        trainer.save_checkpoint(tmp, weights_only=False)
        if trainer.is_global_zero:  # the only rank that wrote it
            os.replace(tmp, self.path)
        self._save_cost = time.perf_counter() - start
        self.saves.append(self._save_cost)
        self._since = 0.0


def _generator_of(loader: Any) -> torch.Generator | None:
    """The generator that draws the train loader's shuffle (inside a RankShard and a
    ViewSampler, or not)."""
    sampler = getattr(loader, "sampler", None)
    while getattr(sampler, "generator", None) is None and hasattr(sampler, "base"):
        sampler = sampler.base
    return getattr(sampler, "generator", None)


class ResumeState(L.Callback):
    def __init__(self, train_loader: Any):
        self.generator = _generator_of(train_loader)
        self._pending: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        np_state = np.random.get_state()
        return {
            "torch": torch.get_rng_state(),
            "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
            "python": random.getstate(),
            "sampler": self.generator.get_state() if self.generator is not None else None,
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._pending = state  # applied when training starts, after everything else is restored

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if self._pending is None:
            return
        state, self._pending = self._pending, None
        torch.set_rng_state(state["torch"])
        name, keys, *rest = state["numpy"]
        np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
        if self.generator is not None and state["sampler"] is not None:
            self.generator.set_state(state["sampler"])
        if state.get("cuda") is not None and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint_epoch(path: Path) -> int | None:
    """The number of epochs a last checkpoint holds (None when it cannot be read)."""
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True)["epoch"]) + 1
    except Exception:  # noqa: BLE001 - a damaged file is simply not resumed from
        return None
