"""A loader for in-memory tensor splits: no worker processes, no per-sample Python.

Each epoch's order is a function of ``(seed, epoch)`` only, so a resumed run sees
exactly the batches an uninterrupted one would. With ``world_size > 1`` each rank takes
its own shard of the same permutation (what ``DistributedSampler`` does); training
loaders pad the order so every rank has as many batches, evaluation loaders do not
(each sample is scored exactly once over the ranks).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch import Tensor

from kdlab.data.base import TensorSplit

Batch = tuple[Tensor, Tensor, Tensor]


class TensorLoader:
    """Yields ``(x, y, index)`` batches; call ``set_epoch`` before each epoch."""

    def __init__(
        self,
        split: TensorSplit,
        batch_size: int,
        shuffle: bool = False,
        drop_last: bool = False,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        device: torch.device | str | None = None,
        pad: bool = True,
    ) -> None:
        self.split = split
        self.pad = pad
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.start_batch = 0  # resume mid-epoch: the next __iter__ skips this many batches
        self.device = torch.device(device) if device is not None else None
        if self.device is not None and self.device != split.x.device:
            self.split = TensorSplit(split.x.to(self.device), split.y.to(self.device))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _indices(self) -> Tensor:
        n = len(self.split)
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(n, generator=g)
        else:
            order = torch.arange(n)
        if self.world_size > 1:
            per_rank = math.ceil(n / self.world_size)
            pad = per_rank * self.world_size - n
            if pad and self.pad:
                order = torch.cat([order, order[:pad]])
            order = order[self.rank :: self.world_size]
        return order

    def __len__(self) -> int:
        n = len(self.split)
        if self.world_size > 1:
            n = math.ceil((n if self.pad else n - self.rank) / self.world_size)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        order = self._indices()
        if self.split.x.device.type != "cpu":
            order = order.to(self.split.x.device)
        start, self.start_batch = self.start_batch, 0
        for b in range(start, len(self)):
            idx = order[b * self.batch_size : (b + 1) * self.batch_size]
            yield self.split.x[idx], self.split.y[idx], idx


def make_loader(
    split: TensorSplit,
    batch_size: int,
    train: bool,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    device: torch.device | str | None = None,
) -> TensorLoader:
    """Training loaders shuffle, pad over ranks and drop the last partial batch; eval
    loaders keep every sample once."""
    drop_last = train and len(split) > batch_size * max(world_size, 1)
    return TensorLoader(
        split, batch_size, train, drop_last, seed, rank, world_size, device, pad=train
    )
