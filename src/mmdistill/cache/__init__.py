"""Everything mmdistill keeps on disk between runs, and when it is stale.

All caches live under `cache.dir` (default `<output_dir>/cache`), one folder per kind, shared by
every run and sweep variant that points there. They change how fast a run goes, never what it
computes (float16 teacher outputs, the default, round the teacher's outputs; float32 is exact).

Each kind, its module, what an entry holds, and its key (`keys.py`): an entry is stale, and a
new one is built, when anything its key hashes changes.

images/<split>-<modality>-<size>px-<key[:16]>/          images.py, switch `cache.images`
    One split's images of one image modality, decoded and resized, as uint8 (uint16 when a file
    holds more than 8 bits). Key (`keys.images_key`): a format version; the modality's kind,
    columns, channels and size; the number of records and every record's image path(s) with
    file size and content digest, in order (files/ below). Also rebuilt when its array's shape
    is not the data's.
stats/<key>.json                                        stats.py, always on
    The per-channel mean and std of `mean: dataset` image modalities over the train split.
    Key (`keys.stats_key`): a format version; the modality's kind, channels and size; every
    train record's image path(s) with file size and content digest, in order.
text/<key>/                                             text.py, switch `cache.text`
    A frozen text encoder's vector of every distinct text of the run. Key (`keys.text_key`):
    the encoder spec (model, pooling, max length), its weights, every text in order.
teacher/<key>/                                          teacher_outputs.py, switches `cache.teacher`,
                                                        `cache.teacher_dtype`
    The frozen teacher's outputs per (train sample, view): every task's logits, the fused
    vector, and each field the objective's terms declare (attention transfer: its normalised
    [1, H, W] map, not the [C, H, W] feature map). Key (`keys.teacher_outputs_key`):
    `keys.teacher_digest` on train (the teacher spec without its checkpoint path, its weights,
    its modalities with the mean/std used, the image cache on or off, the tasks, every train
    record it reads, image files by size and content), the number of views, the augmentation and
    (only with augmentation) the seed, the fields stored and their dtype, and the training
    precision when it is not 32-true (outputs under autocast differ).
teacher_scores/<key>.json                               teacher_scores.py, switch `cache.teacher`
    A teacher's dev and test metrics, stored when a teacher is trained or first evaluated, read
    by every run that loads its checkpoint. Key (`keys.teacher_scores_key`):
    `keys.teacher_digest` on dev and test, every dev/test label, and the training precision when
    it is not 32-true.
baselines/<key>/                                        baselines.py, switch `cache.baseline`
    The baseline student's best weights, its metrics.csv rows and its dev/test results. Key
    (`keys.baseline_key`): the config without the teacher- and KD-only keys
    (`config/hashing.baseline_hash`) and the data signature (`keys.data_signature`: every record
    of every split with its labels, and a feature-KD run's extracted embedding files by size and
    content).
files/<key>.npy                                          file_digests.py, always on
    A 64-bit content digest of every input file (images, extracted embeddings) under one data
    root, with the size and mtime it had when hashed (32 bytes a file, sorted by a digest of its
    path); a file is read and hashed again only when those differ. So the keys above follow
    what the files hold: the same data copied with new times (re-extracted, checked out again,
    synced without times) keeps every entry. Key
    (`keys.file_digests_key`): the memo format and the root's absolute path.

Not here, because they are results rather than caches: a sweep's shared teachers
(`<sweep>/_teachers/<teacher_key>/seed_<n>/`) and its rule for skipping finished runs
(`sweep/plan.py`, `config/hashing.py`).

Invalidation is by key alone: nothing is ever updated in place, an input that changes gives a
new key, and an entry is read only under the key it was written with. Every entry is written
under a hidden temporary name and renamed into place when complete, and checked when opened
(`store.py`: every array's byte size; JSON entries: their stored key), so a crash, a full disk
or a truncated file means a rebuild, never a wrong read. A cache only saves time: an entry that
cannot be written (read-only or full disk) is skipped with a warning and the run goes on.

Old entries stay until removed: opening an entry marks it used (its mtime), and
`mmdistill cache DIR --older-than DAYS` (`inventory.py`) lists and removes entries no run has
used for that long, damaged ones, and builds abandoned for over an hour. Deleting the whole
folder is always safe.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mmdistill.config.schema import ExperimentConfig

# one folder per kind of entry, in the order of the table above
KINDS = ("images", "stats", "text", "teacher", "teacher_scores", "baselines", "files")


def kind_dir(config: "ExperimentConfig", kind: str) -> Path:
    """The folder of one kind of entry under the config's `cache.dir`."""
    if kind not in KINDS:
        raise ValueError(f"unknown cache kind {kind!r}; the kinds are {', '.join(KINDS)}")
    return config.cache_dir / kind
