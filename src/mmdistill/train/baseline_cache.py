"""The baseline student (task loss only), trained once per student setup and shared.

A run's baseline reads neither the teacher nor the KD objective: after `seed_everything` it is
a function of the student spec, its training settings, the supervised loss, the data and the
seed. A sweep over loss variants therefore trained the identical baseline once per variant
(in the 3 presets x 3 seeds demo sweep, six of nine baselines were repeats). Here the first
run that trains a baseline keeps its best weights, its metrics.csv rows and its dev/test
results under `<cache.dir>/baselines/<key>/`; every later run with the same key copies them
into its own run directory instead of training. `cache.baseline: false` trains it every run.

The key is `hashing.baseline_key` (the config without the teacher- and KD-only keys) and the
data signature (`data/records_digest.py`). An entry is written to a temporary directory and
renamed into place whole, so a crash leaves nothing that could be read as finished.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Callable

from mmdistill.config.schema import ExperimentConfig
from mmdistill.data.array_store import mark_used
from mmdistill.data.dataset import DataBundle
from mmdistill.data.records_digest import data_signature
from mmdistill.io import atomic_path
from mmdistill.sweep.hashing import baseline_key
from mmdistill.train.recorder import MetricsLog
from mmdistill.train.stage import StageResult

log = logging.getLogger(__name__)

RESULT_FILE = "result.json"
WEIGHTS_FILE = "baseline_best.safetensors"
STAGE = "baseline"


def baseline_cache_key(config: ExperimentConfig, data: DataBundle) -> str:
    h = hashlib.sha256(b"baseline cache 1")
    h.update(baseline_key(config).encode())
    h.update(data_signature(config, data).encode())
    return h.hexdigest()[:24]


def _read(entry: Path, key: str) -> dict | None:
    try:
        stored = json.loads((entry / RESULT_FILE).read_text())
    except OSError:  # not there (or no cache directory at all)
        return None
    except ValueError:
        log.warning("baseline cache %s is damaged; training the baseline again", entry)
        return None
    if stored.get("key") != key or not (entry / WEIGHTS_FILE).is_file():
        return None
    return stored


def _store(entry: Path, key: str, result: StageResult, rows: list[dict], weights: Path) -> None:
    tmp = entry.with_name(f".{entry.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        tmp.mkdir(parents=True)
        shutil.copyfile(weights, tmp / WEIGHTS_FILE)
        (tmp / RESULT_FILE).write_text(json.dumps({
            "key": key, "dev": result.dev, "test": result.test, "best_epoch": result.best_epoch,
            "seconds": result.seconds, "rows": rows}, indent=1))
        if _read(entry, key) is not None:  # another run stored the same baseline first; keep theirs,
            shutil.rmtree(tmp, ignore_errors=True)  # which a third run may be copying right now
            return
        if entry.exists():  # damaged
            shutil.rmtree(entry, ignore_errors=True)
        os.rename(tmp, entry)
    except OSError as exc:  # lost a race to an identical entry, or no room: the run's own results stand
        shutil.rmtree(tmp, ignore_errors=True)
        if _read(entry, key) is None:
            log.warning("could not store the baseline in %s (%s); later runs will train their own", entry, exc)


def baseline_stage(config: ExperimentConfig, data: DataBundle, metrics: MetricsLog, best_path: Path,
                   train: Callable[[], StageResult]) -> StageResult:
    """The run's baseline: copied from the cache when it holds this key, else `train()`ed and
    stored. A copied baseline's `seconds` is the copy time; the training time is in the rows."""
    if not config.cache.baseline:
        return train()
    start = time.perf_counter()
    key = baseline_cache_key(config, data)
    entry = config.cache_dir / "baselines" / key
    stored = _read(entry, key)
    if stored is not None:
        mark_used(entry / RESULT_FILE)
        try:
            with atomic_path(best_path) as tmp:
                shutil.copyfile(entry / WEIGHTS_FILE, tmp)
        except FileNotFoundError:  # pruned (`mmdistill cache`) between the check and the copy
            stored = None
    if stored is not None:
        for row in stored["rows"]:
            metrics.append(row)
        log.info("baseline student reused from %s (same student, data and seed)", entry)
        return StageResult(dev=stored["dev"], test=stored["test"], best_epoch=stored["best_epoch"],
                           seconds=time.perf_counter() - start, reused_from=str(entry))
    result = train()
    _store(entry, key, result, [r for r in metrics.rows if r["stage"] == STAGE], best_path)
    return result
