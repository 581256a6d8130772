"""The baseline student (task loss only), trained once per student setup and shared.

A run's baseline reads neither the teacher nor the KD objective: after `seed_everything` it is
a function of the student spec, its training settings, the supervised loss, the data and the
seed. A sweep over loss variants therefore trained the identical baseline once per variant
(in the 3 presets x 3 seeds demo sweep, six of nine baselines were repeats). Here the first
run that trains a baseline keeps its best weights, its metrics.csv rows and its dev/test
results under `<cache.dir>/baselines/<key>/`; every later run with the same key copies them
into its own run directory instead of training (`run/stages/baseline.py`).
`cache.baseline: false` trains it every run.

The key is `keys.baseline_key`. An entry is written to a temporary directory and renamed into
place whole, so a crash leaves nothing that could be read as finished. Runs of one seed that
execute at the same time (a sweep's parallel workers, a SLURM array) would otherwise each find
no entry and each train the same baseline: the run that trains it holds the entry's exclusive
lock (`training_lock`) meanwhile, and the others wait for it and copy what it stored.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from mmdistill.cache import kind_dir
from mmdistill.cache.keys import baseline_key
from mmdistill.cache.store import acquire, mark_used, release
from mmdistill.distributed import barrier, broadcast, is_writer, world_size
from mmdistill.io import atomic_path

if TYPE_CHECKING:
    from mmdistill.config.schema import ExperimentConfig
    from mmdistill.data.dataset import DataBundle

log = logging.getLogger(__name__)

RESULT_FILE = "result.json"
WEIGHTS_FILE = "baseline_best.safetensors"


def baseline_entry(config: "ExperimentConfig", data: "DataBundle") -> tuple[Path, str]:
    """(entry directory, key) of this config's baseline; computed once per run (the key hashes
    the data signature, a stat of every image)."""
    key = baseline_key(config, data)
    return kind_dir(config, "baselines") / key, key


@contextmanager
def training_lock(entry: Path) -> Iterator[None]:
    """Held while this run looks for the baseline again and trains it if still missing: a run
    that finds another one training the same baseline waits (saying so) rather than training
    it twice. Under DDP only rank 0 locks, and it does not wait: the other ranks would sit in
    `copy_baseline`'s broadcast for as long as the other run trains, past the process group's
    timeout for a long baseline, so a DDP run trains its own copy as before."""
    lock = None
    if is_writer():
        try:
            lock = acquire(entry, shared=False, blocking=False)
        except BlockingIOError:
            if world_size() == 1:
                log.info("another run is training this baseline (%s); waiting to copy it", entry)
                lock = acquire(entry, shared=False)
    try:
        yield
    finally:
        release(lock)


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


def copy_baseline(entry: Path, key: str, best_path: Path) -> dict[str, Any] | None:
    """The baseline stored under (`entry`, `key`), its weights copied to `best_path`:
    {"dev", "test", "best_epoch", "rows", "entry"}; None when the cache has none (or it was
    pruned by `mmdistill cache` between the check and the copy). Under DDP rank 0 looks and
    copies, and every rank takes its answer: ranks that disagreed would train alone."""
    found = None
    if is_writer():
        found = _copy(entry, key, best_path)
    found = broadcast(found)
    barrier()  # the other ranks may read the copy
    if found is not None:
        log.info("baseline student reused from %s (same student, data and seed)", entry)
    return found


def _copy(entry: Path, key: str, best_path: Path) -> dict[str, Any] | None:
    stored = _read(entry, key)
    if stored is None:
        return None
    mark_used(entry / RESULT_FILE)
    try:
        with atomic_path(best_path) as tmp:
            shutil.copyfile(entry / WEIGHTS_FILE, tmp)
    except FileNotFoundError:
        return None
    return {**stored, "entry": str(entry)}


def store_baseline(entry: Path, key: str, result: dict[str, Any], rows: list[dict], weights: Path) -> None:
    """Keep a freshly trained baseline (`result`: dev, test, best_epoch, seconds; its metrics.csv
    `rows`; its best `weights`) for later runs with the same key. Another run that stored the
    same baseline first keeps its entry, which a third run may be copying right now."""
    if not is_writer():
        return
    tmp = entry.with_name(f".{entry.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        tmp.mkdir(parents=True)
        shutil.copyfile(weights, tmp / WEIGHTS_FILE)
        (tmp / RESULT_FILE).write_text(json.dumps({"key": key, **result, "rows": rows}, indent=1))
        if _read(entry, key) is not None:
            shutil.rmtree(tmp, ignore_errors=True)
            return
        if entry.exists():  # damaged
            shutil.rmtree(entry, ignore_errors=True)
        os.rename(tmp, entry)
    except OSError as exc:  # lost a race to an identical entry, or no room: the run's own results stand
        shutil.rmtree(tmp, ignore_errors=True)
        if _read(entry, key) is None:
            log.warning("could not store the baseline in %s (%s); later runs will train their own", entry, exc)
