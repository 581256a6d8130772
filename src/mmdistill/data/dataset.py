"""The torch Dataset over records, and `load_data`, the one entry point from config to data.

Each item is `{"index": i, "inputs": {modality: tensor | str}, "labels": {task: tensor}}`; the
index travels with the batch because terms such as CRD and the teacher-output cache key on it.
Images are decoded lazily, once per access, at the modality's configured size.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler, Sampler, SequentialSampler, WeightedRandomSampler

from mmdistill.config.schema import SPLITS, ExperimentConfig, ImageModality, ModalitySpec, StackedImageModality
from mmdistill.data.augment import Augmenter
from mmdistill.data.images import load_image
from mmdistill.data.labels import TaskInfo, discover_tasks, encode_labels
from mmdistill.data.derm import read_derm
from mmdistill.data.embeddings import read_embeddings_source
from mmdistill.data.medpix import read_medpix
from mmdistill.data.records import Record, RecordTable, VectorColumn
from mmdistill.data.rows import RawSplits, records_from_rows
from mmdistill.data.stats import resolve_image_stats
from mmdistill.data.table import read_table
from mmdistill.data.views import ViewSampler
from mmdistill.data.shard import RankShard
from mmdistill.errors import UserError
from mmdistill.registry import Registry

SOURCES: Registry[Callable[[Any], RawSplits]] = Registry("data source")
# the key of a batch's `inputs` that says, per modality, which samples lack it (models/net.py)
ABSENT = "_absent"


def _missing(value: Any) -> bool:
    """A sample lacks this text or embedding: no vector, or an empty text."""
    return value is None or (isinstance(value, str) and not value.strip())


def _lacks_some(column: Any) -> bool:
    """Whether some record lacks this text or embedding column's value (checked on the packed
    column: an embedding of length 0, a text that is empty or all whitespace)."""
    if isinstance(column, VectorColumn):
        return bool((np.diff(column.offsets) == 0).any())
    return any(_missing(text) for text in column)

SOURCES.register("table")(read_table)
SOURCES.register("medpix")(read_medpix)
SOURCES.register("derm")(read_derm)
SOURCES.register("embeddings")(read_embeddings_source)


class MultiModalDataset(Dataset):
    def __init__(self, records: RecordTable, modalities: dict[str, ModalitySpec], tasks: list[TaskInfo], split: str,
                 used: set[str] | None = None, augmenter: Augmenter | None = None,
                 embedding_dims: dict[str, int] | None = None):
        self.records = records
        self.modalities = {k: v for k, v in modalities.items() if used is None or k in used}
        self.tasks = tasks
        self.labels = encode_labels(records, tasks, split)
        self.augmenter = augmenter
        # per-modality constants, derived once instead of on every item
        self._image_specs = {n: s for n, s in self.modalities.items() if s.kind in ("image", "stacked_image")}
        self._rgb = {n for n, s in self._image_specs.items() if s.kind == "image" and s.channels == 3}
        self._mean_std = {n: (torch.tensor(s.mean or [0.5] * s.total_channels).view(-1, 1, 1),
                              torch.tensor(s.std or [0.5] * s.total_channels).view(-1, 1, 1))
                          for n, s in self._image_specs.items()}
        # modality -> decoded-image cache (cache/images.py); modalities not in it read the files
        self._image_caches: dict[str, Any] = {}
        # text and embedding modalities some sample lacks (an empty text, no vector): items then
        # carry inputs[ABSENT] = {modality: bool}, which the models turn into a modality mask
        self._embedding_dims = dict(embedding_dims or {})
        self._absent = {n for n, spec in self.modalities.items() if spec.kind in ("text", "embedding")
                        and _lacks_some(records.column(n))}

    def __len__(self) -> int:
        return len(self.records)

    def attach_image_cache(self, name: str, cache: Any) -> None:
        """Read modality `name` from `cache` (anything with `.image(index) -> [C, S, S] float`).
        The dict is replaced, not updated: views made by `select` share it with this dataset."""
        self._image_caches = {**self._image_caches, name: cache}

    def image_levels(self) -> dict[str, int | None]:
        """Per image modality, the levels its images were quantised to when read (255 or 65535
        from the decoded-image cache; None when read from the files)."""
        return {name: (int(self._image_caches[name].scale) if name in self._image_caches else None)
                for name in self._image_specs}

    def _image(self, record: Record, name: str, spec: ImageModality | StackedImageModality,
               index: int | None = None) -> torch.Tensor:
        """Sample `index`'s image from the decoded-image cache when one is attached, else decoded
        from the record's file(s) (`index` None: always from the files, as the cache build does)."""
        cache = self._image_caches.get(name)
        if cache is not None and index is not None:
            return cache.image(index)
        paths = record.values[name] if spec.kind == "stacked_image" else (record.values[name],)
        channels = spec.channels if spec.kind == "stacked_image" else [spec.channels]
        parts = []
        for path, chans in zip(paths, channels):
            try:
                parts.append(load_image(path, chans, spec.size))
            except (OSError, ValueError) as exc:
                raise UserError(f"{record.origin}: cannot read image {path}: {exc}") from None
        return torch.cat(parts) if len(parts) > 1 else parts[0]

    def select(self, modalities: set[str]) -> "MultiModalDataset":
        """The same samples reading only `modalities` (a student stage whose teacher outputs
        come from the cache need not decode the teacher's high-resolution images)."""
        view = copy.copy(self)
        view.modalities = {k: v for k, v in self.modalities.items() if k in modalities}
        view._image_specs = {k: v for k, v in self._image_specs.items() if k in modalities}
        view._image_caches = {k: v for k, v in self._image_caches.items() if k in modalities}
        view._absent = {k for k in self._absent if k in modalities}
        return view

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        """`key` is an index, or (index, view) from a ViewSampler: the view seeds the
        augmentation, so the same (index, view) is the same image for every model and epoch."""
        i, view = (int(key[0]), int(key[1])) if isinstance(key, (tuple, list)) else (int(key), 0)
        record = self.records[i]
        images = {name: self._image(record, name, spec, i) for name, spec in self._image_specs.items()}
        if self.augmenter is not None and images:
            images = self.augmenter(images, self._rgb, self.augmenter.generator(i, view))
        inputs: dict[str, Any] = {}
        for name, spec in self.modalities.items():
            if name in images:
                mean, std = self._mean_std[name]
                inputs[name] = (images[name] - mean) / std
            elif spec.kind == "embedding":
                value = record.values[name]
                inputs[name] = torch.zeros(self._embedding_dims[name]) if value is None else torch.from_numpy(value)
            else:
                inputs[name] = record.values[name]
        if self._absent:
            inputs[ABSENT] = {name: _missing(record.values[name]) for name in sorted(self._absent)}
        labels = {t.name: torch.tensor(self.labels[t.name][i], dtype=torch.float32 if t.type == "binary" else torch.long)
                  for t in self.tasks}
        return {"index": i, "view": view, "inputs": inputs, "labels": labels}


@dataclass
class DataBundle:
    tasks: list[TaskInfo]
    datasets: dict[str, MultiModalDataset]
    files: dict[str, str]
    embedding_dims: dict[str, int]
    # the data's modalities with image mean/std resolved to numbers (data/stats.py): what the
    # datasets normalise with, and what a run records
    modalities: dict[str, ModalitySpec] = field(default_factory=dict)
    # content digests of the image files, not yet recorded: a run records them with its caches,
    # after the data and models are checked (nothing is written for data that fails a check)
    file_digests: Any = None

    def loader(self, split: str, batch_size: int, shuffle: bool, seed: int, num_workers: int = 0,
               balance_task: str | None = None, views: int | None = 1,
               modalities: set[str] | None = None, augment: bool = True,
               collate: Callable[[list[dict]], dict] | None = None) -> DataLoader:
        """`balance_task`: sample with replacement, each sample weighted by 1 / (count of its
        class in that task), so every class is drawn equally often (seed 004's weighted sampling).
        `views`: how many augmented views each sample has (the KD student's `data.views`, so
        its teacher's outputs can be cached per view); None draws a fresh view every epoch
        (the teacher stage). `modalities`: read only these (default: all the dataset has).
        `augment=False`: the plain images even of the train split (embeddings for probes).
        `collate`: instead of PyTorch's default (which it must still apply: it adds to a batch).
        A shuffled loader is sharded across DDP ranks (`data/shard.py`); an unshuffled one (dev,
        test, features) gives every rank the whole split, so metrics need no gathering."""
        dataset = self.datasets[split].select(modalities if modalities is not None else set(self.datasets[split].modalities))
        if not augment:
            dataset.augmenter = None
        # The sampler's generator is its own: the loader draws its workers' base seed from the
        # generator it is given, once per iterator, and iterators are made once per epoch without
        # workers but once per run with persistent ones, so a shared generator would make the
        # shuffle order depend on `num_workers` (and the baseline cache key does not include it).
        order = torch.Generator().manual_seed(seed)
        if balance_task is not None:
            labels = np.asarray(dataset.labels[balance_task])
            weights = 1.0 / np.bincount(labels)[labels]
            base: Sampler = WeightedRandomSampler(torch.as_tensor(weights, dtype=torch.double), len(labels),
                                                  replacement=True, generator=order)
        elif shuffle:
            base = RandomSampler(dataset, generator=order)
        else:
            base = SequentialSampler(dataset)
        sampler = ViewSampler(base, seed, views) if dataset.augmenter is not None else base
        if shuffle or balance_task is not None:  # a train loader: each DDP rank takes its part
            sampler = RankShard(sampler)
        return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers, collate_fn=collate,
                          generator=torch.Generator().manual_seed(seed + 1), persistent_workers=num_workers > 0)


def _embedding_dims(config: ExperimentConfig, records) -> dict[str, int]:
    """The size of each embedding modality some model reads: every present vector must have it;
    with none present at all, the size the source knows (seed 004's parquet file)."""
    dims: dict[str, int] = {}
    for name, spec in config.data.modalities.items():
        if spec.kind != "embedding" or name not in config.used_modalities:
            continue
        found: tuple[str, int] | None = None  # (origin, size) of the first present vector
        for split in SPLITS:
            table = records.splits[split]
            sizes = np.diff(table.column(name).offsets)
            present = np.flatnonzero(sizes)
            if not len(present):
                continue
            if found is None:
                found = (table.origins[int(present[0])], int(sizes[present[0]]))
            wrong = present[sizes[present] != found[1]]
            if len(wrong):
                i = int(wrong[0])
                raise UserError(f"{table.origins[i]}: column {spec.column!r}: embedding has {int(sizes[i])} "
                                f"values, but {found[0]} has {found[1]}")
        if found is None:
            if spec.column not in records.embedding_sizes:
                raise UserError(f"data.modalities.{name}: no record has a value in column {spec.column!r}")
            dims[name] = records.embedding_sizes[spec.column]
            continue
        dims[name] = found[1]
    return dims


def load_data(config: ExperimentConfig, stats_memo: Any = None, file_digests: Any = None) -> DataBundle:
    """Read and check every split: files, columns, image paths, labels. Images are decoded
    later (`mmdistill validate` decodes all of them up front). `stats_memo`
    (`cache/stats.ImageStatsCache`) spares decoding the train split for `mean: dataset`;
    `file_digests` (`cache/file_digests.FileDigestsMemo`) spares reading unchanged image files to
    hash their contents for the cache keys."""
    records = records_from_rows(config, SOURCES.get(config.data.source, "data.source")(config.data), file_digests)
    tasks = discover_tasks(config.tasks, records.splits["train"])
    augment = Augmenter(config.data.augment, config.seed) if config.data.augment else None
    modalities = resolve_image_stats(config.data.modalities, records.splits["train"], config.used_modalities,
                                     progress=config.logging.progress_bar, num_workers=config.data.num_workers,
                                     memo=stats_memo)
    dims = _embedding_dims(config, records)
    datasets = {s: MultiModalDataset(records.splits[s], modalities, tasks, s, config.used_modalities,
                                     augment if s == "train" else None, dims) for s in SPLITS}
    return DataBundle(tasks=tasks, datasets=datasets, files=records.files, embedding_dims=dims,
                      modalities=modalities, file_digests=records.file_digests)


def class_counts(dataset: MultiModalDataset) -> dict[str, dict[str, int]]:
    counts = {}
    for task in dataset.tasks:
        values = np.bincount(dataset.labels[task.name], minlength=len(task.classes))
        counts[task.name] = {c: int(n) for c, n in zip(task.classes, values)}
    return counts
