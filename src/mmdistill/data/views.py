"""Which augmented view of each sample an epoch reads.

A view is identified by (sample index, view index) and its augmentation is drawn from a
generator seeded by (seed, index, view) (`data/augment.py`), so the same view is the same
image for the teacher and the student, at any resolution, in any epoch and any process. That
is what lets the teacher's outputs be computed once per view and cached: a KD student cycles
through `data.views` fixed views, one per sample per epoch, and the cached teacher output for
that view is exactly what the teacher would have computed on the fly.
"""

from __future__ import annotations

from typing import Any, Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Sampler


class ViewSampler(Sampler):
    """Wraps a sampler of indices and yields (index, view) pairs.

    `views` = k: each epoch draws one view in 0..k-1 per sample from a generator seeded by
    (seed, epoch), so the choice is reproducible and needs no state from earlier epochs.
    `views` = None: the view is the epoch number, a fresh augmentation every epoch (the
    teacher stage and the baseline; the KD student by default, whose cache then holds one view
    per epoch). Lightning calls `set_epoch` before every epoch (resumed runs included); without
    it the sampler counts its own epochs.
    """

    def __init__(self, base: Sampler, seed: int, views: int | None):
        self.base = base
        self.seed = seed
        self.views = views
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if hasattr(self.base, "set_epoch"):
            self.base.set_epoch(epoch)

    def views_for_epoch(self, epoch: int, n: int) -> torch.Tensor:
        if self.views is None:
            return torch.full((n,), epoch, dtype=torch.long)
        if self.views == 1:
            return torch.zeros(n, dtype=torch.long)
        gen = torch.Generator().manual_seed(hash((self.seed, epoch, -1)) & 0x7FFF_FFFF_FFFF_FFFF)
        return torch.randint(self.views, (n,), generator=gen)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch, self.epoch = self.epoch, self.epoch + 1
        indices = list(self.base)
        views = self.views_for_epoch(epoch, max(indices, default=-1) + 1).tolist()
        return iter([(i, views[i]) for i in indices])

    def __len__(self) -> int:
        return len(self.base)


def student_views(config: Any) -> int | None:
    """How many views the KD student cycles through: `data.views` when given (seed 003's
    precomputed views, or a cap chosen to save cache space), else a fresh view every epoch with
    augmentation (None) and the one plain view without. The baseline and the teacher always
    draw a fresh view per epoch: neither reads the teacher cache."""
    if config.data.views is not None:
        return config.data.views
    return None if config.data.augment is not None else 1


def cached_views(config: Any, epochs: int) -> int:
    """How many views per sample the teacher-output cache holds for a student stage of
    `epochs`: its fixed views, or one per epoch when it draws a fresh view each epoch (the
    cache build is then the teacher pass an on-the-fly teacher would make, done once for every
    run that shares the teacher, view settings and epochs)."""
    views = student_views(config)
    return views if views is not None else epochs


def view_settings(config: Any) -> dict[str, Any]:
    """What decides which image a view is, besides (sample, view): the augmentation, and the
    seed only when there is one. Outputs computed per view (the teacher cache, extracted
    embeddings) are valid for exactly these settings."""
    augment = config.data.augment.model_dump(mode="json") if config.data.augment else None
    return {"seed": config.seed if augment else None, "augment": augment}


def view_batches(dataset: Dataset, views: int, batch_size: int, num_workers: int = 0) -> Iterator[dict[str, Any]]:
    """Every (sample, view) of `dataset` in batches, view by view and samples in order: the pass
    that computes a teacher's outputs once per view (the cache, `mmdistill extract`). The
    loader has its own generator, because iterating one draws a seed, and such a pass must not
    move the global RNG a student stage then trains with."""
    for view in range(views):
        yield from DataLoader(dataset, batch_size=batch_size, sampler=[(i, view) for i in range(len(dataset))],
                              num_workers=num_workers, generator=torch.Generator().manual_seed(0))
