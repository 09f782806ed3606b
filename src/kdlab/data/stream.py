"""Streaming splits: images read from files by DataLoader worker processes.

Nothing but the file list and the labels is held in memory: each batch is decoded and
augmented in worker processes (``workers``), handed over in pinned memory when training
on CUDA, ``prefetch`` batches ahead per worker. Memory is bounded by
``workers x prefetch`` batches whatever the dataset's size.

Exact mid-epoch resume, without torchdata's ``StatefulDataLoader``: the main process
draws the epoch's order (:func:`kdlab.data.loader.epoch_order`, a function of ``(seed,
epoch)``, DistributedSampler shares across ranks) and sends each worker keys
``(index, sample seed)``, the seed a pure function of ``(seed, epoch, index)``. A
sample's pixels therefore depend on nothing a worker remembers: resuming at batch ``k``
only starts the key sequence at ``k`` (skipped samples are never decoded) and gives the
same remaining batches, augmentation included, with any number of workers, even a
different one from the interrupted run's. ``StatefulDataLoader`` would need its state in
every checkpoint and the same worker count on resume, and adds a dependency.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from kdlab.data.loader import Batch, batches_per_epoch, epoch_order
from kdlab.data.transforms import ImageTransform, sample_seed
from kdlab.errors import DataError, did_you_mean

Key = tuple[int, "int | None"]


class PathList:
    """File paths under ``root``, packed into one byte buffer plus offsets.

    A Python list of a million strings would be copied page by page into every forked
    worker as reference counts change; two numpy arrays are not.
    """

    def __init__(self, root: str, data: np.ndarray, offsets: np.ndarray) -> None:
        self.root = root
        self._data = data
        self._offsets = offsets

    @classmethod
    def from_names(cls, root: str, names: Sequence[str]) -> PathList:
        encoded = [n.encode("utf-8") for n in names]
        offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(e) for e in encoded], out=offsets[1:])
        data = np.frombuffer(b"".join(encoded), dtype=np.uint8).copy()
        return cls(root, data, offsets)

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def __getitem__(self, i: int) -> str:
        return os.path.join(self.root, self.name(i))

    def take(self, idx: np.ndarray) -> PathList:
        return PathList.from_names(self.root, [self.name(int(i)) for i in idx])

    def name(self, i: int) -> str:
        return self._data[self._offsets[i] : self._offsets[i + 1]].tobytes().decode("utf-8")


def open_image(source: Any, mode: str, name: str | None = None) -> Any:
    """A decoded Pillow image in ``mode`` (RGB or L) from a path or a binary file object;
    a DataError names the bad file (``name``, default ``source``)."""
    from PIL import Image  # noqa: PLC0415 - optional extra, imported where files are read

    try:
        with Image.open(source) as img:
            img.load()
            return img if img.mode == mode else img.convert(mode)
    except (OSError, ValueError) as err:
        raise DataError(f"{name or source}: not a readable image ({err})") from None


@dataclass(frozen=True)
class LoaderSpec:
    """What a streaming loader is asked for: the ``make_loader`` arguments plus the
    split's worker options (``data.options.workers``, ``prefetch``, ``pin_memory``)."""

    batch_size: int
    train: bool
    drop_last: bool
    seed: int
    rank: int
    world_size: int
    device: torch.device
    workers: int
    prefetch: int
    pin: bool

    def dataloader_kwargs(self) -> dict[str, Any]:
        return {
            "num_workers": self.workers,
            "pin_memory": self.pin,
            "prefetch_factor": self.prefetch if self.workers else None,
        }


class StreamingSplit:
    """Base of the splits read from disk: ``loader`` (what :func:`kdlab.data.make_loader`
    calls) checks the worker options and hands a :class:`LoaderSpec` to ``_make_loader``."""

    loader_defaults: dict[str, Any]

    def loader(
        self,
        batch_size: int,
        *,
        train: bool,
        drop_last: bool = False,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        device: torch.device | str | None = None,
        **opts: Any,
    ) -> Any:
        options = {"workers": "auto", "prefetch": 2, "pin_memory": "auto"}
        for key, value in {**self.loader_defaults, **opts}.items():
            if key not in options:
                raise DataError(f"unknown loader option {key!r}; {did_you_mean(key, options)}")
            options[key] = value
        dev = torch.device(device) if device is not None else torch.device("cpu")
        workers, prefetch, pin = options["workers"], options["prefetch"], options["pin_memory"]
        if workers == "auto":
            workers = default_workers()
        if not isinstance(workers, int) or isinstance(workers, bool) or workers < 0:
            raise DataError(f"data.options.workers must be 'auto' or an int >= 0, got {workers!r}")
        if not isinstance(prefetch, int) or isinstance(prefetch, bool) or prefetch < 1:
            raise DataError(f"data.options.prefetch must be an int >= 1, got {prefetch!r}")
        if pin not in ("auto", True, False):
            raise DataError(f"data.options.pin_memory must be auto, true or false, got {pin!r}")
        spec = LoaderSpec(
            batch_size,
            train,
            drop_last,
            seed,
            rank,
            world_size,
            dev,
            workers,
            prefetch,
            dev.type == "cuda" if pin == "auto" else pin,
        )
        return self._make_loader(spec)

    def _make_loader(self, spec: LoaderSpec) -> Any:
        raise NotImplementedError


class FolderSplit(StreamingSplit):
    """A split of image files read on demand (see the module docstring).

    Offers what the engine relies on: ``len``, ``y`` (every label, in index order),
    ``example(n)`` (the first ``n`` images through the evaluation transform),
    ``subset(idx)`` and ``loader(...)`` (what :func:`kdlab.data.make_loader` calls).
    """

    def __init__(
        self,
        paths: PathList,
        y: Tensor,
        train_transform: ImageTransform,
        eval_transform: ImageTransform,
        channels: int = 3,
        loader_defaults: dict[str, Any] | None = None,
    ) -> None:
        if len(paths) != len(y):
            raise DataError(f"{len(paths)} files but {len(y)} labels")
        self.paths = paths
        self.y = y
        self.train_transform = train_transform
        self.eval_transform = eval_transform
        self.channels = channels
        self.loader_defaults = dict(loader_defaults or {})

    def __len__(self) -> int:
        return len(self.paths)

    def read(self, i: int, transform: ImageTransform, seed: int | None = None) -> Tensor:
        img = open_image(self.paths[i], "L" if self.channels == 1 else "RGB")
        return transform(img, seed)

    def example(self, n: int) -> Tensor:
        return torch.stack([self.read(i, self.eval_transform) for i in range(min(n, len(self)))])

    def subset(self, idx: Tensor | np.ndarray) -> FolderSplit:
        idx = np.asarray(idx, dtype=np.int64)
        return FolderSplit(
            self.paths.take(idx),
            self.y[torch.from_numpy(idx)],
            self.train_transform,
            self.eval_transform,
            self.channels,
            self.loader_defaults,
        )

    def _make_loader(self, spec: LoaderSpec) -> StreamLoader:
        transform = self.train_transform if spec.train else self.eval_transform
        return StreamLoader(_Samples(self, transform), spec, spec.train and transform.is_random)


class _Samples(Dataset):
    """What a worker holds: the split and one transform; keys carry everything else."""

    def __init__(self, split: FolderSplit, transform: ImageTransform) -> None:
        self.split = split
        self.transform = transform

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, key: Key) -> tuple[Tensor, Tensor, int]:
        i, seed = key
        return self.split.read(i, self.transform, seed), self.split.y[i], i


class _EpochKeys:
    """The batch sampler: one epoch's batches of ``(index, sample seed)`` keys, from
    batch ``start`` on. Lives in the main process, so persistent workers need no state."""

    def __init__(self, n: int, spec: LoaderSpec, random: bool) -> None:
        self.n, self.spec, self.random = n, spec, random
        self.epoch = 0
        self.start = 0

    def total(self) -> int:
        spec = self.spec  # evaluation loaders score each sample once over the ranks
        return batches_per_epoch(
            self.n, spec.batch_size, spec.drop_last, spec.world_size, spec.rank, pad=spec.train
        )

    def __len__(self) -> int:
        return max(self.total() - self.start, 0)

    def __iter__(self) -> Iterator[list[Key]]:
        spec = self.spec  # training loaders shuffle
        order = epoch_order(
            self.n, spec.train, spec.seed, self.epoch, spec.rank, spec.world_size, pad=spec.train
        )
        b = spec.batch_size
        for k in range(self.start, self.total()):
            idx = order[k * b : (k + 1) * b].tolist()
            if self.random:
                yield [(i, sample_seed(spec.seed, self.epoch, i)) for i in idx]
            else:
                yield [(i, None) for i in idx]


def default_workers() -> int:
    """A worker count per process: the CPUs shared among this node's ranks, at most 16."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return max(1, min(16, (cpus or 1) // max(local, 1)))


class StreamLoader:
    """Yields ``(x, y, index)`` batches decoded by worker processes (``workers: 0``
    decodes in the main process). ``set_epoch`` before each epoch; ``start_batch = k``
    makes the next ``__iter__`` start at batch ``k`` of that epoch's order."""

    def __init__(self, dataset: Dataset, spec: LoaderSpec, random: bool) -> None:
        self.spec = spec
        self.device = spec.device
        self.workers = spec.workers
        self.epoch = 0
        self.start_batch = 0
        self._keys = _EpochKeys(len(dataset), spec, random)
        self._loader = DataLoader(
            dataset,
            batch_sampler=self._keys,
            persistent_workers=spec.workers > 0,
            **spec.dataloader_kwargs(),
        )

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self._keys.total()

    def __iter__(self) -> Iterator[Batch]:
        self._keys.epoch = self.epoch
        self._keys.start, self.start_batch = self.start_batch, 0
        yield from on_device(self._loader, self.device)


def on_device(batches: Iterable[Batch], device: torch.device) -> Iterator[Batch]:
    """Batches moved to ``device`` (asynchronously from pinned memory on CUDA); a
    DataError raised in a worker comes back as its own one-line message."""
    non_blocking = device.type == "cuda"
    try:
        for batch in batches:
            yield tuple(t.to(device, non_blocking=non_blocking) for t in batch)  # type: ignore[misc]
    except DataError as err:  # re-raised from a worker with its traceback: keep the line
        raise DataError(_last_line(str(err))) from None


def _last_line(message: str) -> str:
    line = message.strip().splitlines()[-1] if message.strip() else message
    prefix = "kdlab.errors.DataError: "
    return line[len(prefix) :] if line.startswith(prefix) else line
