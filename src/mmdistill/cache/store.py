"""A directory of raw row-major arrays on disk: what the decoded-image, text-vector and
teacher-output caches are made of.

Each array is a plain `<name>.bin` file of `rows x item_shape` values (so `np.memmap(path,
dtype, shape=...)` opens it for inspection), described by `store.json`. A store is built in
a temporary sibling directory and renamed into place only when every array is complete, and
`store.json` carries the expected byte size of every file, so a crash mid-build, a disk that
filled up or a file truncated later is never read: `ArrayStore.open` returns None and the
caller rebuilds.

Several processes share a cache (a sweep's workers, SLURM jobs on one file system): a store is
built under an exclusive lock, so one process builds it and the others wait and then read it,
and a process reading a store holds a shared lock on it until it closes it (or exits), so
`mmdistill cache --older-than` never removes a store in use (advisory `flock` locks in
`<cache.dir>/.locks/`, where the file system supports them).

Rows are read with `os.pread` rather than through an mmap. Pages of a mapped file count in a
process's RSS once touched, so a training process reading a cache through a mapping grows by
the whole cache size over an epoch; reading by offset keeps it flat however large the cache is
(the file is still served from the OS page cache, which is what makes a second epoch fast).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any, Callable

import numpy as np

STORE_FILE = "store.json"
LOCK_POLL_S = 0.2  # how often a process waiting to rebuild a store in use tries again
LOCKS = ".locks"  # <cache.dir>/.locks/<kind>/<entry>.lock, out of the way of the entries

log = logging.getLogger(__name__)


def lock_path(entry: Path) -> Path:
    entry = Path(entry)
    return entry.parent.parent / LOCKS / entry.parent.name / f"{entry.name}.lock"


# lock file -> shared locks this process holds on it (a process never waits on itself)
_HELD: dict[Path, int] = {}


class Lock:
    """A held flock on an entry's lock file; `release()` it (or let the process end)."""

    def __init__(self, fd: int, path: Path, shared: bool):
        self.fd, self.path, self.shared = fd, path, shared
        if shared:
            _HELD[path] = _HELD.get(path, 0) + 1

    def downgrade(self) -> "Lock":
        """Exclusive to shared on the same descriptor. flock converts by unlocking and locking
        again, so a process waiting for an exclusive lock may slip in between (which
        `open_or_build` allows for: its waiters never block on an exclusive lock)."""
        import fcntl

        fcntl.flock(self.fd, fcntl.LOCK_SH)
        if not self.shared:
            self.shared = True
            _HELD[self.path] = _HELD.get(self.path, 0) + 1
        return self

    def release(self) -> None:
        if self.fd < 0:
            return
        os.close(self.fd)
        self.fd = -1
        if self.shared:
            _HELD[self.path] -= 1


def acquire(entry: Path, shared: bool, blocking: bool = True) -> Lock | None:
    """A shared or exclusive lock on `entry` (None where locks are not available, or for an
    exclusive lock this process would wait on itself for: it reads the entry already).
    Not `blocking`: BlockingIOError when another process holds a conflicting lock."""
    try:
        import fcntl
    except ImportError:  # no flock on this platform: caches work, without the guarantees above
        return None
    path = lock_path(entry)
    if not shared and _HELD.get(path, 0) > 0:
        if not blocking:
            raise BlockingIOError(f"{entry} is in use")
        return None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError:  # a read-only cache: nothing to build, nothing to guard
        return None
    try:
        fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | (0 if blocking else fcntl.LOCK_NB))
    except OSError:
        os.close(fd)
        if not blocking:
            raise BlockingIOError(f"{entry} is in use") from None
        return None
    return Lock(fd, path, shared)


def release(lock: Lock | None) -> None:
    if lock is not None:
        lock.release()


class ArrayStore:
    """Read side: rows of named arrays by index. Safe to use from DataLoader workers (each
    process opens its own file descriptors)."""

    def __init__(self, path: Path, meta: dict[str, Any]):
        self.path = Path(path)
        self.meta = meta
        self.arrays: dict[str, dict[str, Any]] = meta["arrays"]
        self._fds: dict[str, int] = {}
        self._pid = -1
        self._lock: Lock | None = None  # a shared lock while in use: never pruned meanwhile

    @classmethod
    def open(cls, path: str | Path, key: str | None = None) -> "ArrayStore | None":
        """The store at `path` if it is complete, has key `key` and no file is short or long;
        otherwise None (a stale store is left for the caller to replace)."""
        path = Path(path)
        try:
            meta = json.loads((path / STORE_FILE).read_text())
        except (OSError, ValueError):
            return None
        if key is not None and meta.get("key") != key:
            return None
        for name, info in meta.get("arrays", {}).items():
            expected = int(np.prod(info["shape"], dtype=np.int64)) * np.dtype(info["dtype"]).itemsize
            try:
                if (path / f"{name}.bin").stat().st_size != expected:
                    return None
            except OSError:
                return None
        return cls(path, meta)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.arrays[name]["shape"])

    def _fd(self, name: str) -> int:
        if self._pid != os.getpid():  # forked into a worker: the parent's descriptors are shared offsets
            self._fds, self._pid = {}, os.getpid()
        if name not in self._fds:
            self._fds[name] = os.open(self.path / f"{name}.bin", os.O_RDONLY)
        return self._fds[name]

    def read(self, name: str, rows: np.ndarray | list[int] | int) -> np.ndarray:
        """Rows `rows` of array `name`, as a fresh array of shape [len(rows), *item_shape]
        (or item_shape for an int)."""
        info = self.arrays[name]
        dtype, item_shape = np.dtype(info["dtype"]), tuple(info["shape"][1:])
        row_bytes = int(np.prod(item_shape, dtype=np.int64)) * dtype.itemsize
        single = np.isscalar(rows)
        rows = np.atleast_1d(np.asarray(rows, dtype=np.int64))
        if rows.size and (rows.min() < 0 or rows.max() >= info["shape"][0]):
            raise IndexError(f"{self.path / name}: row out of range 0..{info['shape'][0] - 1}")
        out = np.empty((len(rows), *item_shape), dtype=dtype)
        buffer = out.reshape(len(rows), row_bytes // dtype.itemsize).view(np.uint8)  # not -1: zero rows is fine
        fd = self._fd(name)
        for j, row in enumerate(rows):
            got = os.preadv(fd, [buffer[j]], int(row) * row_bytes)
            if got != row_bytes:
                raise OSError(f"{self.path / name}.bin: short read at row {row} (file changed on disk?)")
        return out[0] if single else out

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds = {}
        release(self._lock)
        self._lock = None

    def __getstate__(self) -> dict[str, Any]:  # descriptors do not travel to spawned workers
        return {**self.__dict__, "_fds": {}, "_pid": -1, "_lock": None}


class StoreWriter:
    """Write side: declare arrays, append their rows in order, and `commit()`; nothing is
    visible at the final path until every array has all its rows.

        with StoreWriter(path, key="...") as w:
            w.declare("logits", (n, 3), np.float16)
            w.append("logits", chunk)
    """

    def __init__(self, path: str | Path, key: str, info: dict[str, Any] | None = None):
        self.path = Path(path)
        self.key = key
        self.info = info or {}
        self.tmp = self.path.parent / f".{self.path.name}.tmp-{uuid.uuid4().hex[:8]}"
        self.tmp.mkdir(parents=True)
        self.arrays: dict[str, dict[str, Any]] = {}
        self._files: dict[str, Any] = {}
        self._written: dict[str, int] = {}

    def declare(self, name: str, shape: tuple[int, ...], dtype: Any) -> None:
        if "/" in name or name.startswith("."):
            raise ValueError(f"bad array name {name!r}")
        self.arrays[name] = {"shape": [int(s) for s in shape], "dtype": np.dtype(dtype).str}
        self._files[name] = open(self.tmp / f"{name}.bin", "wb")
        self._written[name] = 0

    def append(self, name: str, rows: np.ndarray) -> None:
        info = self.arrays[name]
        rows = np.ascontiguousarray(rows, dtype=np.dtype(info["dtype"]))
        if tuple(rows.shape[1:]) != tuple(info["shape"][1:]):
            raise ValueError(f"{name}: rows of shape {tuple(rows.shape[1:])}, declared {tuple(info['shape'][1:])}")
        self._files[name].write(rows.tobytes())
        self._written[name] += len(rows)

    def commit(self) -> ArrayStore:
        for name, f in self._files.items():
            f.flush()
            os.fsync(f.fileno())
            f.close()
            if self._written[name] != self.arrays[name]["shape"][0]:
                raise RuntimeError(f"{name}: {self._written[name]} rows written, {self.arrays[name]['shape'][0]} declared")
        meta = {"key": self.key, "arrays": self.arrays, **self.info}
        (self.tmp / STORE_FILE).write_text(json.dumps(meta, indent=1))
        if self.path.exists():  # stale, or another process finished the same store first
            current = ArrayStore.open(self.path, self.key)
            if current is not None:
                shutil.rmtree(self.tmp, ignore_errors=True)
                return current
            shutil.rmtree(self.path, ignore_errors=True)
        try:
            os.rename(self.tmp, self.path)
        except OSError:  # lost a race to a complete store
            shutil.rmtree(self.tmp, ignore_errors=True)
        store = ArrayStore.open(self.path, self.key)
        if store is None:
            raise RuntimeError(f"{self.path}: cache store incomplete right after writing it")
        return store

    def abort(self) -> None:
        for f in self._files.values():
            f.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> "StoreWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()


def mark_used(path: Path) -> None:
    """Set `path`'s mtime to now: when a run last read a cache entry, what `mmdistill cache
    --older-than` goes by (`cache/inventory.py`). A read-only cache is left as it is."""
    try:
        os.utime(path)
    except OSError:
        pass


def open_or_build(path: Path, key: str, build: Callable[[], ArrayStore], what: str,
                  valid: Callable[[ArrayStore], bool] | None = None) -> tuple[ArrayStore | None, bool]:
    """The complete store keyed `key` at `path`, or, when it is missing, stale, damaged or not
    `valid`, whatever is there removed (with a warning naming `what`) and `build()`'s store;
    the flag says whether it was built. One process builds at a time: the others wait for its
    lock and then read what it built. A cache only saves time, so one that cannot be written
    (disk full, read-only or missing directory) is (None, False) with a warning, and the caller
    goes on without it rather than failing a run that would otherwise finish."""
    store = _open_in_use(path, key, valid)
    if store is not None:
        return store, False
    lock, store = _lock_to_build(path, key, valid)
    if store is not None:  # built by another process while this one waited
        return store, False
    try:
        store = _usable(path, key, valid)  # built by another process between the two looks
        built = store is None
        if built:
            if path.exists():
                log.warning("%s cache %s is incomplete or damaged; rebuilding it", what, path)
                shutil.rmtree(path, ignore_errors=True)
            try:
                store = build()
            except OSError as exc:
                log.warning("could not write the %s cache %s (%s); going on without it", what, path, exc)
                release(lock)
                return None, False
    except BaseException:
        release(lock)
        raise
    store._lock = lock.downgrade() if lock is not None else acquire(path, shared=True)  # now reading it
    mark_used(path / STORE_FILE)
    return store, built


def _lock_to_build(path: Path, key: str, valid: Callable[[ArrayStore], bool] | None
                   ) -> tuple[Lock | None, ArrayStore | None]:
    """The exclusive lock to build the store at `path`, or the store another process built
    while this one waited. It never blocks on the exclusive lock: the process that built a store
    keeps a shared lock on it for as long as it reads it (its whole run), so a process queued
    for exclusive access would wait for that run to end, or forever where the builder waits for
    this process (two ranks of one DDP run that both found no store, then meet at a collective).
    Instead it tries, and between tries takes a shared lock, which waits out a builder and then
    finds its store."""
    if _HELD.get(lock_path(path), 0) > 0:  # this process reads the entry already: never wait on itself
        return None, None
    waiting = False
    while True:
        try:
            return acquire(path, shared=False, blocking=False), None
        except BlockingIOError:
            pass
        store = _open_in_use(path, key, valid)
        if store is not None:
            return None, store
        if not waiting:  # readers of an incomplete or damaged store: it is rebuilt once they are done
            log.info("waiting for other processes to close %s before rebuilding it", path)
            waiting = True
        time.sleep(LOCK_POLL_S)


def _usable(path: Path, key: str, valid: Callable[[ArrayStore], bool] | None) -> ArrayStore | None:
    store = ArrayStore.open(path, key)
    return store if store is not None and (valid is None or valid(store)) else None


def _open_in_use(path: Path, key: str, valid: Callable[[ArrayStore], bool] | None) -> ArrayStore | None:
    """The valid store at `path`, marked used and held with a shared lock; else None."""
    lock = acquire(path, shared=True)
    store = _usable(path, key, valid)
    if store is None:
        release(lock)
        return None
    store._lock = lock
    mark_used(path / STORE_FILE)
    return store
