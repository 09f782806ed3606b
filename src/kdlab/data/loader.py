"""Loaders: one epoch order for every kind of split, and ``make_loader``, the one entry point.

Each epoch's order is a function of ``(seed, epoch)`` only, so a resumed run sees
exactly the batches an uninterrupted one would. With ``world_size > 1`` each rank takes
its own share of the same permutation (what ``DistributedSampler`` does: padded by
wrapping around to a multiple of ``world_size``, then every ``world_size``-th index); training
loaders pad, evaluation loaders do not (each sample is scored exactly once over the ranks).

In-memory splits (:class:`~kdlab.data.base.TensorSplit`) get a :class:`TensorLoader`
(no worker processes, no per-sample Python); any other split builds its own loader
through its ``loader(...)`` method (streaming splits: worker processes, see
:mod:`kdlab.data.stream`). Every loader yields ``(x, y, index)`` batches, has
``len()`` = batches per epoch on this rank, ``set_epoch(e)`` and ``start_batch``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

from kdlab.data.base import TensorSplit

Batch = tuple[Tensor, Tensor, Tensor]


def epoch_order(
    n: int,
    shuffle: bool,
    seed: int,
    epoch: int,
    rank: int = 0,
    world_size: int = 1,
    pad: bool = True,
) -> Tensor:
    """The sample indices this rank visits in ``epoch``, in order. ``pad`` wraps the order
    around so every rank gets as many samples (training); without it each sample is
    visited once over the ranks (evaluation)."""
    if shuffle:
        g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        order = torch.randperm(n, generator=g)
    else:
        order = torch.arange(n)
    if world_size > 1:
        per_rank = math.ceil(n / world_size)
        missing = per_rank * world_size - n
        if missing and pad:
            order = torch.cat([order, order[:missing]])
        order = order[rank::world_size]
    return order


def batches_per_epoch(
    n: int, batch_size: int, drop_last: bool, world_size: int = 1, rank: int = 0, pad: bool = True
) -> int:
    """``len()`` of a loader over ``n`` samples on ``rank`` (see :func:`epoch_order`)."""
    if world_size > 1:
        n = math.ceil((n if pad else n - rank) / world_size)
    return n // batch_size if drop_last else math.ceil(n / batch_size)


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
        return epoch_order(
            len(self.split), self.shuffle, self.seed, self.epoch, self.rank, self.world_size,
            pad=self.pad,
        )

    def __len__(self) -> int:
        return batches_per_epoch(
            len(self.split), self.batch_size, self.drop_last, self.world_size, self.rank, self.pad
        )

    def __iter__(self) -> Iterator[Batch]:
        order = self._indices()
        if self.split.x.device.type != "cpu":
            order = order.to(self.split.x.device)
        start, self.start_batch = self.start_batch, 0
        for b in range(start, len(self)):
            idx = order[b * self.batch_size : (b + 1) * self.batch_size]
            yield self.split.x[idx], self.split.y[idx], idx


def make_loader(
    split: Any,
    batch_size: int,
    train: bool,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    device: torch.device | str | None = None,
    **opts: Any,
) -> Any:
    """The loader for ``split``: training loaders shuffle, pad over ranks and drop the last
    partial batch (when there is more than one); evaluation loaders keep every sample once,
    in order.

    ``opts`` go to streaming loaders (``workers``, ``prefetch``, ``pin_memory``); an
    in-memory split has nothing to tune and ignores them.
    """
    drop_last = train and len(split) > batch_size * max(world_size, 1)
    if isinstance(split, TensorSplit):
        return TensorLoader(
            split, batch_size, train, drop_last, seed, rank, world_size, device, pad=train
        )
    return split.loader(
        batch_size,
        train=train,
        drop_last=drop_last,
        seed=seed,
        rank=rank,
        world_size=world_size,
        device=device,
        **opts,
    )
