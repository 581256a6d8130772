"""The key of every cache entry: a hash of exactly what the entry's contents depend on.

This module is the answer to "when is a cache stale": an entry is read only under the key it was
written with, so anything a key hashes is something whose change makes a new entry, and
anything it leaves out is, deliberately, something the contents do not depend on. Records are
hashed as read (texts, embeddings, labels); image files by path, size and content digest
(`file_digests`, recomputed only for a file whose size or mtime changed), so the same bytes
copied with new times keep every entry. A sweep's resume
uses the same record hashing for a whole run (`data_signature`), since its config hash alone
cannot see a corrected label file or a replaced image.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

import numpy as np
import torch
from torch import nn

from mmdistill.config.hashing import baseline_hash
from mmdistill.data.views import cached_views, view_settings

if TYPE_CHECKING:
    from mmdistill.config.schema import ExperimentConfig
    from mmdistill.data.dataset import DataBundle
    from mmdistill.cache.file_digests import FileDigests
    from mmdistill.data.records import Record, RecordTable

IMAGES_FORMAT = 2  # bump when decoding (data/images.py) or the store layout changes: old entries become stale
STATS_FORMAT = 1  # bump when data/stats.py computes the numbers differently
FILE_DIGESTS_FORMAT = 2  # bump when file_digests.py hashes or stores files differently: every memo is re-read


# --------------------------------------------------------------------------- primitives


def file_signature(path: Any, digests: "FileDigests") -> list[Any]:
    """What a key records of an input file: path, size and content digest (`file_digests`: read
    again only when its size or mtime changed). A missing file gets None and fails later, where
    its record is named."""
    try:
        st = os.stat(path)
    except (OSError, TypeError):
        return [str(path), None, None]
    content = digests([str(path)], np.array([st.st_size], dtype=np.int64), np.array([st.st_mtime_ns], dtype=np.int64))
    return [str(path), st.st_size, int(content[0])]


def hash_value(h: "hashlib._Hash", value: Any) -> None:
    if isinstance(value, np.ndarray):
        h.update(value.tobytes())
    elif isinstance(value, (list, tuple)):
        for v in value:
            hash_value(h, v)
    else:
        h.update(repr(value).encode())


def hash_table(h: "hashlib._Hash", table: "RecordTable", modalities: Iterable[str], labels: bool) -> None:
    """Feed `h` the columns of `modalities` of a split's records (image columns with their
    files' sizes and content digests) and with `labels` every task's labels: digests each table computes
    once per run (`RecordTable.digest`), so the many keys of a run hash the data once."""
    for m in modalities:
        h.update(table.digest(m).encode())
    if labels:
        for task in sorted(table.labels):
            h.update(table.digest(f"label:{task}").encode())


def weights_digest(model: nn.Module) -> str:
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        # the tensor's own buffer, not a `tobytes()` copy: MiniLM's embedding table alone is 45 MiB
        h.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def data_signature(config: "ExperimentConfig", data: "DataBundle", record: bool = False,
                   modalities: Iterable[str] | None = None) -> str:
    """Every record of every split the run read, with labels, plus the precomputed teacher
    embeddings of a feature-KD run: a sweep re-runs a finished run whose signature differs.
    `modalities`: hash only these columns of the records (the baseline student's own, so a
    teacher that reads one more modality leaves its key alone); the splits' sizes and labels
    always. `record`: remember the embedding files' digests in the cache (a run, once its data
    and models are checked; a dry run or a plan's check writes nothing)."""
    h = hashlib.sha256(b"data signature 2")
    for split, dataset in data.datasets.items():
        h.update(f"{split}:{len(dataset.records)}".encode())
        columns = sorted(dataset.records.values if modalities is None else set(modalities) & set(dataset.records.values))
        hash_table(h, dataset.records, columns, labels=True)
    if config.data.source == "embeddings":
        from mmdistill.cache.file_digests import FileDigestsMemo
        from mmdistill.data.embeddings import SPLIT_DIRS, split_dir

        # a memo of their own: three files, not the images' whole memo parsed on every call
        digests = FileDigestsMemo(config)(f"{Path(config.data.root).absolute()} embeddings")
        for split in SPLIT_DIRS:
            hash_value(h, file_signature(split_dir(config.data, split) / config.data.embeddings_file, digests))
        if record:
            digests.save()
    return h.hexdigest()[:24]


# --------------------------------------------------------------------------- one key per kind of entry


def image_paths(record: "Record", name: str, spec: Any) -> list[str]:
    value = record.values[name]
    return [str(p) for p in value] if spec.kind == "stacked_image" else [str(value)]


def images_key(records: "RecordTable", name: str, spec: Any) -> str:
    """Decoded images of one modality of one split: the modality's kind, columns, channels and
    size, and every record's path(s) in order with each file's size and content digest (as
    when the data was read), so a changed, added, removed or reordered image is a new key."""
    h = hashlib.sha256()
    h.update(json.dumps({
        "format": IMAGES_FORMAT, "kind": spec.kind,
        "columns": list(spec.columns) if spec.kind == "stacked_image" else [spec.column],
        "channels": spec.channels, "size": spec.size, "samples": len(records),
    }, sort_keys=True).encode())
    h.update(records.digest(name).encode())
    return h.hexdigest()


def stats_key(train: "RecordTable", name: str, spec: Any) -> str:
    """`mean: dataset` statistics of one modality: its kind, channels and size, and the train
    split's image path(s) in order with each file's size and content digest (the digest the
    records carry), so a changed, added or removed train image is a new key."""
    h = hashlib.sha256(json.dumps({"format": STATS_FORMAT, "kind": spec.kind, "channels": spec.channels,
                                   "size": spec.size}, sort_keys=True, default=str).encode())
    h.update(train.digest(name).encode())
    return h.hexdigest()[:24]


def file_digests_key(root: str) -> str:
    """The memo of input-file content digests under one data root (`file_digests.py`): the
    memo format and the root's absolute path. Its entries check themselves (size and mtime)."""
    return hashlib.sha256(f"file digests {FILE_DIGESTS_FORMAT} {root}".encode()).hexdigest()[:24]


def text_key(encoder: nn.Module, spec: dict, digests: np.ndarray) -> str:
    """A frozen text encoder's vectors: its spec (`model`, `pooling`, `max_length`), its weights
    (`encoder.model`, so a fine-tuned or reloaded model is a new key) and every text, in order,
    by its 128-bit digest (`cache/text.text_digests`, already computed to index the store)."""
    h = hashlib.sha256()
    h.update(json.dumps({"format": 2, "spec": spec, "texts": len(digests)}, sort_keys=True, default=str).encode())
    h.update(weights_digest(encoder.model).encode())
    h.update(np.ascontiguousarray(digests, dtype="<u8").tobytes())
    return h.hexdigest()[:24]


def teacher_digest(config: "ExperimentConfig", teacher: nn.Module, data: "DataBundle",
                   splits: tuple[str, ...]) -> "hashlib._Hash":
    """A hash of what any teacher output on `splits` depends on: the teacher's architecture and
    weights, its modality settings (with the mean/std actually used, which `mean: dataset`
    derives from train), whether inputs come through the 8-bit image cache, the tasks, and every
    record of those splits the teacher reads (image files by size and content)."""
    reads = list(config.teacher.encoders)
    h = hashlib.sha256()
    h.update(json.dumps({
        "teacher": config.teacher.model_dump(mode="json", exclude={"checkpoint"}),
        "modalities": {m: data.modalities[m].model_dump(mode="json") for m in reads},
        "image_cache": config.cache.images,
        "tasks": [[t.name, t.type, list(t.classes)] for t in data.tasks],
        "samples": {s: len(data.datasets[s]) for s in splits},
    }, sort_keys=True, default=str).encode())
    h.update(weights_digest(teacher).encode())
    for split in splits:
        hash_table(h, data.datasets[split].records, reads, labels=False)
    return h


def teacher_outputs_key(config: "ExperimentConfig", teacher: nn.Module, data: "DataBundle", fields: list[str],
                        views: int | None = None) -> str:
    """The teacher's outputs on train: `teacher_digest` of train, the views (count, default the
    student stage's `data/views.cached_views`, and the augmentation and seed that decide what
    each view is), the fields stored and their dtype. A field a term derives from the teacher's
    output carries its parameters in its name (attention transfer's `attention_map:<m>:p=<p>`),
    so hashing the names keys it by them, and apart from the raw map stored before it; changing
    how a derived field is computed means renaming it or bumping `format`."""
    if views is None:
        views = cached_views(config, config.training.student.epochs)
    h = teacher_digest(config, teacher, data, ("train",))
    h.update(json.dumps({"format": 2, "views": views, **view_settings(config), "fields": fields,
                         "dtype": config.cache.teacher_dtype}, sort_keys=True, default=str).encode())
    _mixed_precision(h, config)
    return h.hexdigest()[:24]


def _mixed_precision(h: Any, config: "ExperimentConfig") -> None:
    """Outputs computed under autocast differ from fp32 ones (`distributed.autocast`): a
    mixed-precision run keys them apart (fp32 runs keep the keys they always had)."""
    if config.training.precision != "32-true":
        h.update(f"precision {config.training.precision}".encode())


def teacher_scores_key(config: "ExperimentConfig", teacher: nn.Module, data: "DataBundle") -> str:
    """The teacher's inputs on dev/test (`teacher_digest`) and, since scores compare against
    them, every dev/test label: a corrected label file is a new key."""
    h = teacher_digest(config, teacher, data, ("dev", "test"))
    h.update(b"scores format 2")
    for split in ("dev", "test"):
        hash_table(h, data.datasets[split].records, (), labels=True)
    _mixed_precision(h, config)
    return h.hexdigest()[:24]


def baseline_key(config: "ExperimentConfig", data: "DataBundle") -> str:
    """The baseline student: the config without the teacher- and KD-only keys
    (`config/hashing.baseline_hash`) and the data signature over the student's own modalities,
    not over every modality some model reads: a column only the teacher reads changes none of
    the student's batches (augmentation draws per sample, not per modality: `data/augment.py`),
    so an image-only student's baseline is the same under an image-only and an image + text
    teacher, and is trained once for both."""
    h = hashlib.sha256(b"baseline cache 2")
    h.update(baseline_hash(config).encode())
    h.update(data_signature(config, data, modalities=config.student.encoders).encode())
    return h.hexdigest()[:24]
