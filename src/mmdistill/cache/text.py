"""Frozen text encoders' vectors, computed once per (encoder weights, text set) and kept on disk.

A frozen text encoder gives the same vector for the same text. This keeps them across
processes, as the image cache does for decoded images: every seed of a sweep, the KD and
baseline students and each re-run read the vectors from `<cache.dir>/text/<key>/` instead of
running the language model over the data again. The key (`keys.text_key`) hashes the encoder's
spec, its weights (so a fine-tuned or reloaded model is a new key) and every distinct text of
the run's splits. The store is filled lazily, on the encoder's first forward, so a model that is
built but never run (a checked-only model, a teacher whose outputs are all cached) costs nothing.

Vectors are read from the store per batch, never loaded whole. Holding them in memory as a
{text: tensor} dict cost about 3 GB of Python objects at a million texts, for the whole run and
in every process that forked from it. `TextVectors` keeps only three numpy arrays instead, 24
bytes a text: the texts' 64-bit hashes, sorted, the 64 bits that follow them in the same digest
(a check), and each one's row in the store. A batch's texts are hashed, found with
`np.searchsorted` and their rows read with `os.pread` (`store.py`), so they are exactly the
float32 values written at build time.

Collisions. The digest is 128-bit BLAKE2b, computed from the texts when the store is opened
(the store holds only the vectors; its key already pins every text to its row, so there is
nothing more to store or check on disk). A text counts as stored only when both halves match,
so a text that is not in the store (one the run's splits did not have) is mistaken for a
stored one only on a 128-bit collision. Two stored texts whose first halves collide (odds of
about 3e-8 at a million texts) are both left out of the index and encoded live like unstored
texts, which keeps the search a plain `searchsorted` on distinct keys; their live vectors may
differ from the stored ones in the last bits (another batch, other padding), which is all such
a collision costs.

The store stays open, under a shared lock (`store.py`), for as long as the encoder may read it:
until the encoder's weights change (`TextEncoder._load_from_state_dict`) or it is garbage
collected. A pickled or deep-copied encoder (a spawned DataLoader worker, `compress`) takes a
lock of its own when it is unpickled and reopens its files on first read; if the store has gone
by then, it encodes every text live.

An encoder takes part when it offers `vector_source` (models/encoders.TextEncoder does) and is
frozen; this module reads nothing else of the models, so models can build with it.
"""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from mmdistill.cache import kind_dir
from mmdistill.cache.keys import text_key
from mmdistill.cache.store import ArrayStore, StoreWriter, acquire, open_or_build, release
from mmdistill.data.records import StringColumn, TakenStrings

if TYPE_CHECKING:
    from mmdistill.config.schema import ExperimentConfig
    from mmdistill.data.dataset import DataBundle


BATCH = 64

log = logging.getLogger(__name__)


def text_digests(texts: Sequence[str] | StringColumn | TakenStrings) -> np.ndarray:
    """[len(texts), 2] uint64: each text's 128-bit BLAKE2b digest of its UTF-8 bytes, as the
    index key (column 0) and its check (column 1). Stable across processes and runs, unlike
    Python's `hash`. Written into one buffer as the texts come: no list of digests."""
    raw = bytearray(16 * len(texts))
    for i, text in enumerate(texts):
        raw[16 * i:16 * i + 16] = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()
    return np.frombuffer(raw, dtype="<u8").reshape(len(texts), 2).astype(np.uint64)


def distinct_texts(columns: Sequence[StringColumn]) -> tuple[TakenStrings, np.ndarray]:
    """The distinct texts of `columns` (every split's text column), ordered by digest, as
    (column, row) pairs into the data's own packed columns: a million texts are never a million
    Python strings at once, as a sorted set of them would be (about 100 bytes a text for the
    whole run), nor a second copy of the text column. With them, their digests (`text_digests`,
    in the same order): the store's key and index are made from these, so opening a store hashes
    each text once, not once per use."""
    digests = np.concatenate([text_digests(c) for c in columns]) if columns else np.zeros((0, 2), np.uint64)
    pairs = np.ascontiguousarray(digests).view([("key", "<u8"), ("check", "<u8")]).ravel()
    _, first = np.unique(pairs, return_index=True)
    starts = np.cumsum([0] + [len(c) for c in columns])
    owner = np.searchsorted(starts, first, side="right") - 1
    texts = TakenStrings(columns, owner.astype(np.int32), (first - starts[owner]).astype(np.int64))
    return texts, np.ascontiguousarray(digests[first])


class TextVectors:
    """The vectors of the store's texts, found by digest and read from disk a batch at a time;
    `read(texts)` is what `TextEncoder.forward` calls (see the module docstring)."""

    def __init__(self, store: ArrayStore, key: str, digests: np.ndarray):
        """`digests`: the stored texts' `text_digests`, row i being the store's row i."""
        self.store: ArrayStore | None = store
        self.key = key
        order = np.argsort(digests[:, 0], kind="stable")
        keys, checks = digests[order, 0], digests[order, 1]
        clash = np.zeros(len(keys), dtype=bool)
        same = keys[1:] == keys[:-1]
        clash[1:] |= same
        clash[:-1] |= same
        if clash.any():
            log.info("%s: %d texts share a 64-bit hash with another; they are encoded live", store.path,
                     int(clash.sum()))
        self.keys = np.ascontiguousarray(keys[~clash])
        self.checks = np.ascontiguousarray(checks[~clash])
        self.rows = np.ascontiguousarray(order[~clash].astype(np.int64))

    def __len__(self) -> int:
        return len(self.keys)

    def read(self, texts: list[str]) -> tuple[np.ndarray, torch.Tensor]:
        """(found: bool [len(texts)], the found texts' stored vectors: float32 [found.sum(), dim]
        on the CPU, in order). A text read twice in a batch is read from disk once."""
        found = np.zeros(len(texts), dtype=bool)
        if self.store is None or not len(self.keys) or not texts:
            return found, torch.empty(0)
        digests = text_digests(texts)
        at = np.minimum(np.searchsorted(self.keys, digests[:, 0]), len(self.keys) - 1)
        found = (self.keys[at] == digests[:, 0]) & (self.checks[at] == digests[:, 1])
        rows, inverse = np.unique(self.rows[at[found]], return_inverse=True)
        return found, torch.from_numpy(self.store.read("vectors", rows)[inverse.reshape(-1)])

    def close(self) -> None:
        """Close the store's files and release its shared lock; later reads find nothing."""
        if self.store is not None:
            self.store.close()
            self.store = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # at interpreter exit the modules it needs may be gone; the kernel releases locks
            pass

    def __setstate__(self, state: dict[str, Any]) -> None:
        """In the new copy: a shared lock of its own, then the store as it is now; when it was
        removed or replaced meanwhile, no store (every text is encoded live)."""
        self.__dict__.update(state)  # the pickled ArrayStore came without descriptors or lock
        if self.store is None:
            return
        path = self.store.path
        lock = acquire(path, shared=True)
        self.store = ArrayStore.open(path, self.key)
        if self.store is None:
            release(lock)
        else:
            self.store._lock = lock


class TextVectorSource:
    """What `attach_text_caches` gives a frozen encoder as its `vector_source`: called with the
    encoder on its first forward (and again after its weights change), it opens or builds the
    store for the encoder's current weights and returns its `TextVectors`, or None when the cache
    cannot be written. `texts` and `digests` are the run's distinct texts and their digests
    (`distinct_texts`), kept to compute the key, build the store and index it."""

    def __init__(self, config: "ExperimentConfig", spec: dict, texts: Sequence[str] | StringColumn | TakenStrings,
                 digests: np.ndarray):
        self.path = kind_dir(config, "text")
        self.progress = config.logging.progress_bar
        self.spec = spec
        self.texts = texts
        self.digests = digests

    def __call__(self, encoder: Any) -> TextVectors | None:
        key = text_key(encoder, self.spec, self.digests)
        path = self.path / key
        shape = (len(self.texts), encoder.out_dim)
        store, _ = open_or_build(path, key, lambda: _build(path, key, encoder, self.texts, self.progress),
                                 "text vector", valid=lambda s: "vectors" in s.arrays and s.shape("vectors") == shape)
        if store is None:  # not writable: the encoder computes (and memoizes) them itself
            return None
        return TextVectors(store, key, self.digests)


@torch.no_grad()
def _build(path: Path, key: str, encoder: Any, texts: Sequence[str] | StringColumn | TakenStrings, progress: bool) -> ArrayStore:
    started = time.perf_counter()
    path.parent.mkdir(parents=True, exist_ok=True)
    encoder.model.eval()  # frozen encoders are pinned to eval mode already; this keeps it explicit
    with StoreWriter(path, key, {"texts": len(texts)}) as writer:
        writer.declare("vectors", (len(texts), encoder.out_dim), np.float32)
        for start in tqdm(range(0, len(texts), BATCH), desc="caching text vectors", unit="batch",
                          disable=not progress):
            batch = [texts[i] for i in range(start, min(start + BATCH, len(texts)))]
            writer.append("vectors", encoder._encode(batch).float().cpu().numpy())
        store = writer.commit()
    log.info("text vectors (%d texts) computed in %.1f s, cached in %s", len(texts), time.perf_counter() - started, path)
    return store


def attach_text_caches(model: Any, config: "ExperimentConfig", data: "DataBundle", role: str) -> Any:
    """Give each frozen text encoder of `model` (the config's `role`) its on-disk vectors,
    for the distinct texts of every split; `cache.text: false` leaves the in-process memo alone."""
    if not config.cache.text:
        return model
    for name in model.modalities:
        encoder = model.encoders[name]
        if hasattr(encoder, "vector_source") and not encoder.trainable:
            texts, digests = distinct_texts([ds.records.column(name) for ds in data.datasets.values()])
            spec = getattr(config, role).encoders[name].model_dump(mode="json", exclude={"trainable"})
            encoder.vector_source = TextVectorSource(config, spec, texts, digests)
    return model
