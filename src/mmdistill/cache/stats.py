"""`mean: dataset` statistics, computed once per train split and image settings.

Seed 004's `compute_stats` decodes every train image to get its per-channel mean and std, and a
run needs them before anything else (the datasets normalise with them, the teacher-output keys
hash them). Without a memo every run, re-run and sweep variant decoded the whole train split
again, as much work as building the decoded-image cache. The key (`keys.stats_key`) hashes the
modality's settings and the train column of image paths with each file's size and content
digest (what the records already carry, `data/records.py`), so a changed, added or removed
image is a new entry.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING

from mmdistill.cache import kind_dir
from mmdistill.cache.keys import stats_key
from mmdistill.cache.store import mark_used
from mmdistill.distributed import is_writer
from mmdistill.io import write_json_atomic

if TYPE_CHECKING:
    from mmdistill.config.schema import ExperimentConfig

log = logging.getLogger(__name__)


class ImageStatsCache:
    """What `data/stats.resolve_image_stats` asks before decoding a train split, and tells after."""

    def __init__(self, config: "ExperimentConfig"):
        self.folder = kind_dir(config, "stats")

    key = staticmethod(stats_key)  # the key every caller of the memo hashes a train split with

    def get(self, key: str) -> tuple[list[float], list[float]] | None:
        path = self.folder / f"{key}.json"
        try:
            stored = json.loads(path.read_text())
            if stored.get("key") != key:
                return None
            found = list(stored["mean"]), list(stored["std"])
        except OSError:  # not stored yet (or no cache directory at all)
            return None
        except (ValueError, KeyError, TypeError, AttributeError):
            log.warning("image statistics cache %s is damaged; computing them again", path)
            return None
        mark_used(path)
        return found

    def put(self, key: str, mean: list[float], std: list[float], what: str) -> None:
        if not is_writer():  # under DDP every rank resolves the statistics; rank 0 keeps them
            return
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            write_json_atomic(self.folder / f"{key}.json", {"key": key, "modality": what, "mean": mean, "std": std})
        except OSError as exc:  # a cache only saves time
            log.warning("could not write the image statistics cache in %s (%s); going on without it", self.folder, exc)
