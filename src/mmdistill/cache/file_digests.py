"""What an input file holds, as a 64-bit content digest, remembered by its size and mtime.

Cache keys and a sweep's resume must follow what a file holds, not when it was written: a
dataset re-extracted from its archive, checked out again, synced without times or re-mounted
by a container gets new mtimes and the same bytes, and should keep every decoded-image cache,
cached teacher output, shared baseline and finished sweep run. Keyed by mtime, all of them
were stale after such a copy (here: every session that re-created `../shared` re-ran whole
sweeps). Reading every file on every run would cost a pass over the dataset, so a file is read
again only when its (size, mtime_ns) differ from what this memo recorded for its path; a run on
unchanged files costs the one `stat` it already does.

The memo is one JSON file per data root under the cache's `files/` folder (`keys.file_digests_key`),
shaped like a teacher-score entry (`key` + payload), so `mmdistill cache` lists and prunes it
like one.
Several processes (sweep workers, DDP ranks) may update it at once: each writes the whole file
atomically, merged with what is on disk just before, so at worst a lost entry is hashed again.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from mmdistill.cache import kind_dir
from mmdistill.cache.keys import file_digests_key
from mmdistill.cache.store import mark_used
from mmdistill.data.file_content import hash_files
from mmdistill.distributed import is_writer
from mmdistill.io import write_text_atomic

if TYPE_CHECKING:
    from mmdistill.config.schema import ExperimentConfig

log = logging.getLogger(__name__)


class FileDigestsMemo:
    """What `load_data` takes as `file_digests`, as it takes `stats.ImageStatsCache` for its
    statistics: per data root, a `FileDigests` with that root's memo in the config's cache."""

    def __init__(self, config: "ExperimentConfig"):
        self.folder, self.progress = kind_dir(config, "files"), config.logging.progress_bar

    def __call__(self, root: str) -> "FileDigests":
        key = file_digests_key(root)
        return FileDigests(self.folder / f"{key}.json", key, self.progress)


class FileDigests:
    """Content digests of the files one run reads, with the memo at `path` (a table built
    without one: `data.file_content.digests_without_memo`). Read once when created; `save`
    records what was hashed."""

    def __init__(self, path: Path, key: str, progress: bool = False):
        self.path, self.key, self.progress = path, key, progress
        self.known = self._read()
        self.new: dict[str, list[int]] = {}

    def _read(self) -> dict[str, list[int]]:
        try:
            data = json.loads(self.path.read_text())
            if data.get("key") == self.key and isinstance(data.get("files"), dict):
                mark_used(self.path)  # what `mmdistill cache --older-than` goes by
                return {path: entry for path, entry in data["files"].items()  # a malformed entry is stale
                        if isinstance(entry, list) and len(entry) == 3 and all(type(v) is int for v in entry)}
        except (OSError, ValueError, AttributeError):
            pass
        return {}

    def __call__(self, paths: Sequence[str], sizes: np.ndarray, mtimes: np.ndarray) -> np.ndarray:
        """The content digest of each file, in order: from the memo where its size and mtime
        are the ones recorded, read and hashed otherwise."""
        out = np.empty(len(paths), dtype=np.int64)
        stale: list[int] = []
        for i, path in enumerate(paths):
            entry = self.known.get(path)
            if entry is not None and entry[0] == sizes[i] and entry[1] == mtimes[i]:
                out[i] = entry[2]
            else:
                stale.append(i)
        if stale:
            hashed = hash_files([paths[i] for i in stale], self.progress)
            for i, digest in zip(stale, hashed.tolist()):
                out[i] = digest
                self.known[paths[i]] = self.new[paths[i]] = [int(sizes[i]), int(mtimes[i]), digest]
        return out

    def done_reading(self) -> None:
        """Drop the lookup table once the tables are built: at a million files it is hundreds of
        megabytes a run would otherwise hold (and fork into its loader workers) for nothing."""
        self.known = {}

    def save(self) -> None:
        """Record the files hashed since the last save, merged with what other processes (sweep
        workers, DDP ranks) recorded meanwhile; a memo that cannot be written only costs the
        next run a re-read."""
        if not self.new or not is_writer():  # under DDP rank 0 keeps them
            return
        files = self._read()
        files.update(self.new)
        try:
            write_text_atomic(self.path, json.dumps({"key": self.key, "files": files}, separators=(",", ":")))
            self.new = {}
        except OSError as exc:
            log.warning("could not record file digests in %s (%s); the next run reads the files again", self.path, exc)
