"""What an input file holds, as a 64-bit content digest, remembered by its size and mtime.

Cache keys and a sweep's resume must follow what a file holds, not when it was written: a
dataset re-extracted from its archive, checked out again, synced without times or re-mounted
by a container gets new mtimes and the same bytes, and should keep every decoded-image cache,
cached teacher output, shared baseline and finished sweep run. Keyed by mtime, all of them
were stale after such a copy (here: every session that re-created `../shared` re-ran whole
sweeps). Reading every file on every run would cost a pass over the dataset, so a file is read
again only when its (size, mtime_ns) differ from what this memo recorded for its path; a run on
unchanged files costs the one `stat` it already does.

The memo is one file per data root under the cache's `files/` folder (`keys.file_digests_key`):
a `.npy` of fixed 32-byte entries (a 64-bit digest of the path, size, mtime, content digest),
sorted by path digest. A JSON `{path: [size, mtime, digest]}` held about 320 bytes of Python
objects per file while a run read it (36.7 MiB at 120k images, docs/scale.md); packed, it is
the 32 bytes on disk, looked up by `searchsorted`. Two paths with the same 64-bit digest and
also the same size and mtime would share a content digest: at a million files, odds of about
1 in 4 x 10^7 before size and mtime.
`mmdistill cache` lists and prunes it like the other entries (`inventory.py`).
Several processes (sweep workers, DDP ranks) may update it at once: each writes the whole file
atomically, merged with what is on disk just before, so at worst a lost entry is hashed again.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from mmdistill.cache import kind_dir
from mmdistill.cache.keys import file_digests_key
from mmdistill.cache.store import mark_used
from mmdistill.data.file_content import hash_files
from mmdistill.distributed import is_writer
from mmdistill.io import atomic_path

if TYPE_CHECKING:
    from mmdistill.config.schema import ExperimentConfig

log = logging.getLogger(__name__)

ENTRY = np.dtype([("path", "<u8"), ("size", "<i8"), ("mtime", "<i8"), ("digest", "<i8")])


def path_ids(paths: Sequence[str]) -> np.ndarray:
    """A 64-bit blake2b of each path, what the memo is sorted and searched by."""
    joined = b"".join(hashlib.blake2b(p.encode("utf-8", "surrogateescape"), digest_size=8).digest() for p in paths)
    return np.frombuffer(joined, dtype="<u8")


def read_memo(path: Path) -> np.ndarray:
    """The memo's entries, or none where it is missing, truncated or of another layout (its
    files are then hashed again and the memo rewritten)."""
    try:
        entries = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return np.empty(0, ENTRY)
    if entries.dtype != ENTRY or entries.ndim != 1:
        return np.empty(0, ENTRY)
    return entries


def merge(*parts: np.ndarray) -> np.ndarray:
    """One entry per path, sorted by path digest; where a path repeats, the last part's wins."""
    combined = np.concatenate(parts)
    if not len(combined):
        return combined
    combined = combined[np.argsort(combined["path"], kind="stable")]
    last = np.append(combined["path"][1:] != combined["path"][:-1], True)
    return combined[last]


class FileDigestsMemo:
    """What `load_data` takes as `file_digests`, as it takes `stats.ImageStatsCache` for its
    statistics: per data root, a `FileDigests` with that root's memo in the config's cache."""

    def __init__(self, config: "ExperimentConfig"):
        self.folder, self.progress = kind_dir(config, "files"), config.logging.progress_bar

    def __call__(self, root: str) -> "FileDigests":
        return FileDigests(self.folder / f"{file_digests_key(root)}.npy", self.progress)


class FileDigests:
    """Content digests of the files one run reads, with the memo at `path` (a table built
    without one: `data.file_content.digests_without_memo`). Read once when created; `save`
    records what was hashed."""

    def __init__(self, path: Path, progress: bool = False):
        self.path, self.progress = path, progress  # its name is the key (`keys.file_digests_key`)
        self.known = read_memo(path)
        if len(self.known):
            mark_used(path)  # what `mmdistill cache --older-than` goes by
        self.new: list[np.ndarray] = []

    def __call__(self, paths: Sequence[str], sizes: np.ndarray, mtimes: np.ndarray) -> np.ndarray:
        """The content digest of each file, in order: from the memo where its size and mtime
        are the ones recorded, read and hashed otherwise."""
        ids = path_ids(paths)
        sizes, mtimes = np.asarray(sizes, dtype=np.int64), np.asarray(mtimes, dtype=np.int64)
        out = np.zeros(len(paths), dtype=np.int64)
        if len(self.known) and len(paths):
            at = np.minimum(np.searchsorted(self.known["path"], ids), len(self.known) - 1)
            found = self.known[at]
            hit = (found["path"] == ids) & (found["size"] == sizes) & (found["mtime"] == mtimes)
            out[hit] = found["digest"][hit]
        else:
            hit = np.zeros(len(paths), dtype=bool)
        stale = np.flatnonzero(~hit)
        if stale.size:
            out[stale] = hash_files([paths[i] for i in stale], self.progress)
            new = np.empty(stale.size, ENTRY)
            new["path"], new["size"], new["mtime"], new["digest"] = ids[stale], sizes[stale], mtimes[stale], out[stale]
            self.new.append(new)
            self.known = merge(self.known, new)
        return out

    def done_reading(self) -> None:
        """Drop the lookup table once the tables are built: a run need not hold it (nor fork it
        into its loader workers) while it trains."""
        self.known = np.empty(0, ENTRY)

    def save(self) -> None:
        """Record the files hashed since the last save, merged with what other processes (sweep
        workers, DDP ranks) recorded meanwhile; a memo that cannot be written only costs the
        next run a re-read."""
        if not self.new or not is_writer():  # under DDP rank 0 keeps them
            return
        entries = merge(read_memo(self.path), *self.new)
        try:
            with atomic_path(self.path) as tmp, open(tmp, "wb") as f:
                np.save(f, entries, allow_pickle=False)
            self.new = []
        except OSError as exc:
            log.warning("could not record file digests in %s (%s); the next run reads the files again", self.path, exc)
