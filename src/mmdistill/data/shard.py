"""Each DDP rank's part of a training epoch, chosen so that N devices train on the batches one
device would.

`RankShard` wraps the train loader's sampler (shuffle, weighted sampling, augmented views: the
order one process would draw, from generators seeded alike on every rank) and gives rank r of
W the positions r, r + W, r + 2W, ... of that order. With `batch_size` per device, global step k
then covers exactly positions kBW .. (k+1)BW - 1: the batch one process with batch size B x W
would take at step k. A DDP run therefore sees the same samples per step as a single-device
run at the same global batch size (a test compares the two), resumes the same way (the order
comes from the sampler's own generator, which the last checkpoint keeps), and needs no second
shuffle. The order is padded with its first positions to a multiple of W, as PyTorch's
DistributedSampler does, so every rank runs the same number of steps (DDP hangs otherwise).
On one process it is the sampler itself, untouched.

Lightning's own sharding is turned off (`use_distributed_sampler=False`, `train/fit.py`): it
would shuffle our order again with a seed of its own. Rank and world size are read when the
epoch starts, after Lightning has set up the process group.
"""

from __future__ import annotations

import itertools
from typing import Any, Iterator

from torch.utils.data import Sampler

from mmdistill.distributed import global_rank, world_size


class RankShard(Sampler):
    def __init__(self, base: Sampler):
        self.base = base

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.base, "set_epoch"):
            self.base.set_epoch(epoch)

    def __iter__(self) -> Iterator[Any]:
        world = world_size()
        if world == 1:
            return iter(self.base)
        return self._shard(iter(self.base), world, global_rank() % world)

    @staticmethod
    def _shard(order: Iterator[Any], world: int, rank: int) -> Iterator[Any]:
        """Reads the order W positions at a time, as far as this rank's batches need and no
        further: a sampler's generator then advances exactly as under one process, which also
        stops reading where its last batch ends (a later epoch's order depends on that)."""
        first: list[Any] = []  # the start of the order, to pad the last group with
        while True:
            group = list(itertools.islice(order, world))
            first += group[: world - len(first)]
            if len(group) == world:
                yield group[rank]
                continue
            if group:
                yield (group + (first * world)[: world - len(group)])[rank]
            return

    def __len__(self) -> int:
        world = world_size()
        return -(-len(self.base) // world)  # ceil
