"""Everything mmdistill keeps on disk between runs, and when it is stale.

All caches live under `cache.dir` (default `<output_dir>/cache`), one folder per kind, shared by
every run and sweep variant that points there. They change how fast a run goes, never what it
computes (float16 teacher outputs, the default, round the teacher's outputs; float32 is exact).

| folder (kind)     | module             | an entry holds                                      | key (`keys.py`): a new entry when any of these change                                                                                          | switch |
|-------------------|--------------------|-----------------------------------------------------|-------------------------------------------------------------------------------------------------------------------------------------------------|--------|
| `images/`         | `images.py`        | one split's images of one modality, decoded and resized, uint8 (uint16 for files with more than 8 bits) | the modality's kind, columns, channels, size; every record's image path(s) with file size and mtime, in order                         | `cache.images` |
| `text/`           | `text.py`          | a frozen text encoder's vector of every distinct text of the run                 | the encoder spec (model, pooling, max length), its weights, every text                                                          | `cache.text` |
| `teacher/`        | `teacher_outputs.py` | the frozen teacher's outputs per (train sample, view): logits, fused vector, and every feature the objective's terms read | `keys.teacher_digest` on train (teacher spec and weights, its modalities with the mean/std used, image cache on/off, tasks, every train record it reads), the views (count, augmentation, seed), the fields stored, the dtype | `cache.teacher`, `cache.teacher_dtype` |
| `teacher_scores/` | `teacher_scores.py` | a teacher checkpoint's dev and test metrics (JSON)  | `keys.teacher_digest` on dev and test, and every dev/test label                                                                                   | `cache.teacher` |
| `baselines/`      | `baselines.py`     | the baseline student's best weights, its metrics.csv rows and its dev/test results | the config without the teacher- and KD-only keys (`config/hashing.baseline_hash`) and the data signature (`keys.data_signature`: every record of every split, with labels) | `cache.baseline` |

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
KINDS = ("images", "text", "teacher", "teacher_scores", "baselines")


def kind_dir(config: "ExperimentConfig", kind: str) -> Path:
    """The folder of one kind of entry under the config's `cache.dir`."""
    if kind not in KINDS:
        raise ValueError(f"unknown cache kind {kind!r}; the kinds are {', '.join(KINDS)}")
    return config.cache_dir / kind
