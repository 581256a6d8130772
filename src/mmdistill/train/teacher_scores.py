"""The dev/test scores of a teacher loaded from a checkpoint, computed once per teacher.

Every run of a sweep loads the same shared teacher checkpoint and, before this cache, scored
it on dev and test again: for a 2-epoch tiny_cnn grid run with a ResNet-50 teacher that was
about an eighth of the run. The scores are a function of the teacher's weights and the dev/test
inputs and labels alone, so they are stored as JSON under a key that hashes exactly those
(`teacher_cache.teacher_digest` and the labels) beside the teacher-output cache, and follow the same switch:
`cache.teacher: false` (`--no-teacher-cache`) evaluates the teacher every run.
"""

from __future__ import annotations

import json
import logging
import time

from mmdistill.config.schema import ExperimentConfig
from mmdistill.data.dataset import DataBundle
from mmdistill.data.records_digest import hash_records
from mmdistill.data.array_store import mark_used
from mmdistill.io import write_json_atomic
from mmdistill.models.net import MultiModalNet
from mmdistill.train.stage import StageResult, evaluate_only
from mmdistill.train.teacher_cache import teacher_digest

log = logging.getLogger(__name__)


def teacher_scores_key(config: ExperimentConfig, teacher: MultiModalNet, data: DataBundle) -> str:
    """The teacher's inputs on dev/test (`teacher_digest`) and, since scores compare against
    them, every dev/test label: a corrected label file is a new key."""
    h = teacher_digest(config, teacher, data, ("dev", "test"))
    h.update(b"scores format 2")
    for split in ("dev", "test"):
        hash_records(h, data.datasets[split].records, {}, labels=True)
    return h.hexdigest()[:24]


def _path(config: ExperimentConfig, key: str):
    return config.cache_dir / "teacher_scores" / f"{key}.json"


def remember_teacher_scores(config: ExperimentConfig, teacher: MultiModalNet, data: DataBundle,
                            result: StageResult) -> None:
    """Store the scores of a teacher just trained (its best weights are loaded), so the runs
    that load its checkpoint, as a sweep's variants do, need not evaluate it again."""
    if config.cache.teacher:
        key = teacher_scores_key(config, teacher, data)
        try:
            write_json_atomic(_path(config, key), {"key": key, "dev": result.dev, "test": result.test})
        except OSError as exc:  # a cache only saves time: the run's own results stand
            log.warning("could not store the teacher's scores in %s (%s)", _path(config, key), exc)


def evaluate_teacher(config: ExperimentConfig, teacher: MultiModalNet, data: DataBundle) -> StageResult:
    """The teacher's dev/test metrics, read from the cache when it holds them for these weights
    and data (`seconds` is then the lookup time), otherwise computed and stored."""
    start = time.perf_counter()
    if config.cache.teacher:
        key = teacher_scores_key(config, teacher, data)
        path = _path(config, key)
        try:
            stored = json.loads(path.read_text())
            if stored.get("key") == key:
                mark_used(path)
                log.info("reusing the teacher's dev/test scores from %s", path)
                return StageResult(dev=stored["dev"], test=stored["test"], best_epoch=None,
                                   seconds=time.perf_counter() - start, reused_from=str(path))
        except OSError:  # not stored yet (or no cache directory at all)
            pass
        except (ValueError, KeyError, AttributeError):
            log.warning("teacher score cache %s is damaged; evaluating the teacher again", path)
    result = evaluate_only(teacher, data, config.training.teacher.batch_size)
    remember_teacher_scores(config, teacher, data, result)
    return result
