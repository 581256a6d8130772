"""What a cache directory holds, and removing what has not been used for a while.

Every change of teacher weights, data file or view setting is a new cache key, so a project's
`cache/` only grows: a sweep over teachers or a month of edits leaves stores nobody will read
again. Nothing here guesses which ones those are from keys; it goes by use. Opening a store
(`store.open_or_build`) or a score or baseline file marks it (`store.mark_used`), so its mtime
is when a run last read or wrote it, and `mmdistill cache DIR --older-than DAYS` removes what no
run has touched for that long. The kinds are the package's `KINDS` (the table in
`mmdistill/cache/__init__.py`).

Removal first renames an entry out of its key's path and then deletes it, so a run starting
meanwhile finds either the whole store or none, and rebuilds what it needs. A build in
progress lives under a hidden name (`.<name>.tmp-*`, `.<name>.*.tmp`); one untouched for
`ABANDONED_AFTER_S` is a crashed build's leftover and goes too, a younger one is left alone
whatever the age asked for.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mmdistill.cache import KINDS
from mmdistill.cache.store import STORE_FILE, ArrayStore, acquire, release
from mmdistill.errors import UserError

ABANDONED_AFTER_S = 3600.0


@dataclass
class CacheEntry:
    kind: str
    path: Path
    bytes: int
    last_used: float  # seconds since the epoch
    state: str  # "ok", "damaged" (rebuilt on next use), "unfinished" (a build's temporary directory),
    #             or "in use" (a running job reads it: kept whatever its age)

    @property
    def name(self) -> str:
        return self.path.name


def resolve_cache_dir(path: str | Path) -> Path:
    """`path` itself when it is a cache directory, or its `cache/` (an output_dir)."""
    path = Path(path)
    for candidate in (path, path / "cache"):
        if candidate.is_dir() and any((candidate / kind).is_dir() for kind in KINDS):
            return candidate
    raise UserError(f"{path}: no mmdistill cache here (expected {', '.join(KINDS)} folders in it or in its cache/)")


def _size_and_newest(path: Path) -> tuple[int, float]:
    """Bytes under `path` and the newest mtime among them (files may vanish meanwhile: a
    concurrent build renames its temporary directory)."""
    size, newest = 0, path.stat().st_mtime
    for file in [path] if path.is_file() else path.rglob("*"):
        try:
            st = file.stat()
        except FileNotFoundError:
            continue
        if not file.is_dir():
            size += st.st_size
        newest = max(newest, st.st_mtime)
    return size, newest


def _entry(kind: str, path: Path) -> CacheEntry:
    size, newest = _size_and_newest(path)
    if path.name.startswith("."):  # array stores and atomic JSON writes both build under a hidden name
        return CacheEntry(kind, path, size, newest, "unfinished")
    if path.suffix == ".npy":  # a file-digest memo (`file_digests.py`): its header and length
        try:
            np.load(path, mmap_mode="r")
            return CacheEntry(kind, path, size, newest, "ok")  # newest: the file's own mtime
        except (OSError, ValueError, EOFError):
            return CacheEntry(kind, path, size, newest, "damaged")
    if path.is_file() or kind == "baselines":  # a teacher-score JSON; a baseline's result.json and weights
        result = path if path.is_file() else path / "result.json"
        try:
            json.loads(result.read_text())["key"]
            state = "ok" if path.is_file() or any(path.glob("*.safetensors")) else "damaged"
            used = result.stat().st_mtime
        except (OSError, ValueError, KeyError, TypeError):
            state, used = "damaged", newest
        return CacheEntry(kind, path, size, used, state)
    store = ArrayStore.open(path)
    if store is None:
        return CacheEntry(kind, path, size, newest, "damaged")
    return CacheEntry(kind, path, size, (path / STORE_FILE).stat().st_mtime, "ok")


def list_entries(cache_dir: Path) -> list[CacheEntry]:
    """Every store, score file and unfinished build under `cache_dir`, least recently used first."""
    entries = []
    for kind in KINDS:
        if (cache_dir / kind).is_dir():
            for path in sorted((cache_dir / kind).iterdir()):
                if ".trash-" not in path.name:
                    try:
                        entries.append(_entry(kind, path))
                    except FileNotFoundError:  # renamed or removed by another process meanwhile
                        pass
    return sorted(entries, key=lambda e: e.last_used)


def removable(entry: CacheEntry, older_than_s: float, now: float) -> bool:
    age = now - entry.last_used
    if entry.state == "unfinished":
        return age > max(older_than_s, ABANDONED_AFTER_S)
    return entry.state == "damaged" or age > older_than_s


def remove(entry: CacheEntry) -> bool:
    """Out of the key's path in one rename, then deleted; False (and left alone) when a run is
    using it (it holds the entry's lock) or another process removed it first."""
    try:
        lock = acquire(entry.path, shared=False, blocking=False)
    except BlockingIOError:
        return False
    trash = entry.path.with_name(f".{entry.path.name}.trash-{uuid.uuid4().hex[:8]}")
    try:
        os.rename(entry.path, trash)
    except FileNotFoundError:  # removed by someone else meanwhile: gone all the same
        return True
    finally:
        release(lock)
    if trash.is_dir():
        shutil.rmtree(trash, ignore_errors=True)
    else:
        trash.unlink(missing_ok=True)
    return True


def prune(cache_dir: Path, older_than_days: float, dry_run: bool = False,
          now: float | None = None) -> tuple[list[CacheEntry], list[CacheEntry]]:
    """(removed, kept): damaged entries, and entries last used more than `older_than_days` ago,
    are removed (only listed with `dry_run`); an entry a running job is reading is kept."""
    if older_than_days < 0:
        raise UserError(f"--older-than: needs a number of days >= 0, got {older_than_days}")
    now = time.time() if now is None else now
    removed, kept = [], []
    for entry in list_entries(cache_dir):
        (removed if removable(entry, older_than_days * 86400.0, now) else kept).append(entry)
    if not dry_run:
        in_use = [entry for entry in removed if not remove(entry)]
        for entry in in_use:
            entry.state = "in use"
        removed = [e for e in removed if e not in in_use]
        kept += in_use
    return removed, kept


def format_table(entries: list[CacheEntry], now: float | None = None) -> str:
    now = time.time() if now is None else now
    lines = [f"{'kind':<15}{'size':>10}  {'last used':>12}  {'state':<10}  name"]
    for e in entries:
        lines.append(f"{e.kind:<15}{_size(e.bytes):>10}  {_age(now - e.last_used):>12}  {e.state:<10}  {e.name}")
    lines.append(f"{len(entries)} entries, {_size(sum(e.bytes for e in entries))}")
    return "\n".join(lines)


def _size(n: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def _age(seconds: float) -> str:
    if seconds < 3600:
        return f"{max(seconds, 0) / 60:.0f} min ago"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h ago"
    return f"{seconds / 86400:.1f} d ago"
