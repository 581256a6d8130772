"""A 64-bit digest of what an input file holds, for keys that must follow content, not mtimes.

Hashing lives here, beside the records that carry the digests; remembering them between runs
(so unchanged files are not read again) is the cache's job (`cache/file_digests.py`).
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

import numpy as np
from tqdm.auto import tqdm

from mmdistill.errors import UserError

_CHUNK = 1 << 20
_THREADS = 4  # hashing releases the GIL; reads overlap on a network filesystem
_BLOCK = 4096  # files submitted at a time: a million pending tasks would hold gigabytes


def file_digest64(path: str | os.PathLike) -> int:
    """blake2b of the file's bytes, as a signed 64-bit integer (what a numpy int64 column holds)."""
    h = hashlib.blake2b(digest_size=8)
    try:
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
    except OSError as exc:  # unreadable, or removed since the table was read
        raise UserError(f"{path}: cannot read this file ({exc.strerror or exc})") from None
    return int.from_bytes(h.digest(), "little", signed=True)


def hash_files(paths: Sequence[str], progress: bool = False) -> np.ndarray:
    """`file_digest64` of each file, in order (each distinct path read once); a progress bar
    from a thousand files on; a file that cannot be read is a UserError naming it."""
    distinct = list(dict.fromkeys(paths))
    found: dict[str, int] = {}
    with ThreadPoolExecutor(_THREADS) as pool, \
            tqdm(total=len(distinct), desc="hashing input files", unit="file", leave=False,
                 disable=not progress or len(distinct) < 1000) as bar:
        for start in range(0, len(distinct), _BLOCK):
            block = distinct[start:start + _BLOCK]
            for path, digest in zip(block, pool.map(file_digest64, block)):
                found[path] = digest
                bar.update(1)
    return np.fromiter((found[p] for p in paths), dtype=np.int64, count=len(paths))


def digests_without_memo(paths: Sequence[str], sizes: np.ndarray, mtimes: np.ndarray) -> np.ndarray:
    """Every file read: what a table built without the cache's memo gets."""
    return hash_files(list(paths))
