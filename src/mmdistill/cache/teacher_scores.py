"""The dev/test scores of a teacher, kept per teacher weights and dev/test data.

Every run of a sweep loads the same shared teacher checkpoint and, before this cache, scored
it on dev and test again: for a 2-epoch tiny_cnn grid run with a ResNet-50 teacher that was
about an eighth of the run. The scores are a function of the teacher's weights and the dev/test
inputs and labels alone, so they are stored as JSON under a key that hashes exactly those
(`keys.teacher_scores_key`) and follow the teacher cache's switch: `cache.teacher: false`
(`--no-teacher-cache`) evaluates the teacher every run.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmdistill.cache import kind_dir
from mmdistill.cache.keys import teacher_scores_key
from mmdistill.cache.store import mark_used
from mmdistill.distributed import is_writer
from mmdistill.io import write_json_atomic

if TYPE_CHECKING:
    from torch import nn

    from mmdistill.config.schema import ExperimentConfig
    from mmdistill.data.dataset import DataBundle

log = logging.getLogger(__name__)


def scores_path(config: "ExperimentConfig", key: str) -> Path:
    return kind_dir(config, "teacher_scores") / f"{key}.json"


def read_teacher_scores(config: "ExperimentConfig", teacher: "nn.Module",
                        data: "DataBundle") -> tuple[dict[str, Any] | None, Path | None]:
    """({"dev": M, "test": M}, its file) when the cache holds this teacher's scores on this data;
    (None, None) when it does not, is switched off, or the entry is damaged (with a warning)."""
    if not config.cache.teacher:
        return None, None
    key = teacher_scores_key(config, teacher, data)
    path = scores_path(config, key)
    try:
        stored = json.loads(path.read_text())
        if stored.get("key") == key:
            mark_used(path)
            log.info("reusing the teacher's dev/test scores from %s", path)
            return {"dev": stored["dev"], "test": stored["test"]}, path
    except OSError:  # not stored yet (or no cache directory at all)
        pass
    except (ValueError, KeyError, AttributeError):
        log.warning("teacher score cache %s is damaged; evaluating the teacher again", path)
    return None, None


def store_teacher_scores(config: "ExperimentConfig", teacher: "nn.Module", data: "DataBundle",
                         dev: dict[str, Any], test: dict[str, Any]) -> None:
    """Keep the scores of a teacher just trained or evaluated (its best weights loaded), so the
    runs that load its checkpoint, as a sweep's variants do, need not evaluate it again."""
    if not config.cache.teacher or not is_writer():
        return
    key = teacher_scores_key(config, teacher, data)
    try:
        write_json_atomic(scores_path(config, key), {"key": key, "dev": dev, "test": test})
    except OSError as exc:  # a cache only saves time: the run's own results stand
        log.warning("could not store the teacher's scores in %s (%s)", scores_path(config, key), exc)
