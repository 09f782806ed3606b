"""WebDataset tar shards: written from an image folder, read from disk or any fsspec URL.

Layout (``kdlab data shard FOLDER OUT``)::

    OUT/kdlab-shards.json         classes, and per split its shards and every label
    OUT/train-000000.tar ...      samples: KEY.jpg (the file's own bytes), KEY.cls
    OUT/val-000000.tar ...

Each split is written in one seeded random order (so a shard mixes classes); ``KEY`` is
the sample's position in that order, which is also its index in the split. Reading needs
the ``webdataset`` package (``pip install 'kdlab[shards]'``) for the tar stream and the
shuffle buffer; files are opened with fsspec, so ``data.root`` may be a local folder or
any fsspec URL (``s3://bucket/imagenet``, ``gs://...``, ``https://...``, given the
matching fsspec backend).

Order and splitting. Each epoch the shards are permuted by ``(seed, epoch)``; rank ``r``
of ``R`` takes every ``R``-th shard from ``r``, its worker ``w`` of ``W`` every ``W``-th of
those, and each worker mixes its samples through a shuffle buffer seeded by ``(seed,
epoch, r, w)`` (``shuffle_buffer``). No sample is read twice in an epoch, every sample of
the assigned shards is read once. Every rank stops after the same number of batches (the
smallest rank's count), so DDP never waits on a rank with nothing left; when shards do not
divide evenly the surplus batches of larger ranks are left out of that epoch (write a
number of shards that is a multiple of ranks x workers to lose none).

Resume is exact for the same number of workers: each worker knows how many of its
batches the first ``k`` batches of the epoch took (the DataLoader takes batches from the
workers in turn) and skips them without decoding; augmentation is seeded per sample from
``(seed, epoch, index)`` as for image folders.
"""

from __future__ import annotations

import io
import json
import math
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from kdlab.config import DataConfig
from kdlab.data.base import DataBundle, stratified_split
from kdlab.data.loader import Batch
from kdlab.data.stream import LoaderSpec, StreamingSplit, on_device, open_image
from kdlab.data.transforms import ImageTransform, sample_seed
from kdlab.errors import DataError

INDEX = "kdlab-shards.json"
FORMAT = "kdlab-shards/1"
IMAGE_KEYS = ("jpg", "jpeg", "png", "webp", "bmp", "ppm", "pgm", "gif", "tif", "tiff")


def import_webdataset() -> Any:
    try:
        import webdataset  # noqa: PLC0415 - optional extra
    except ImportError:
        raise DataError(
            "WebDataset shards need the webdataset package: pip install 'kdlab[shards]'"
        ) from None
    return webdataset


def _join(base: str, name: str) -> str:
    return base.rstrip("/") + "/" + name


def is_shard_root(root: str) -> bool:
    """Whether ``root`` (a path or fsspec URL) holds a shard index."""
    if "://" not in root:
        return (Path(root).expanduser() / INDEX).is_file()
    import fsspec  # noqa: PLC0415 - a torch dependency

    fs, path = fsspec.core.url_to_fs(root)
    return bool(fs.exists(_join(path, INDEX)))


def read_index(root: str) -> dict[str, Any]:
    import fsspec  # noqa: PLC0415

    url = _join(str(Path(root).expanduser()) if "://" not in root else root, INDEX)
    try:
        with fsspec.open(url, "rt") as f:
            index = json.load(f)
    except (OSError, ValueError) as err:
        raise DataError(f"{url}: not a readable shard index ({err})") from None
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        raise DataError(f"{url}: not a kdlab shard index (expected format {FORMAT!r})")
    return index


# ---------------------------------------------------------------- writing


def write_shards(
    folder: str | Path,
    out: str | Path,
    per_shard: int = 1000,
    seed: int = 0,
    val_labels: str | None = None,
) -> dict[str, Any]:
    """Write every split of an ImageNet-layout folder as shards; returns the index."""
    from kdlab.data.folder import _class_dirs  # noqa: PLC0415
    from kdlab.data.imagenet import _list_classes, _list_labelled  # noqa: PLC0415

    wds = import_webdataset()
    folder, out = Path(folder).expanduser(), Path(out).expanduser()
    if per_shard < 1:
        raise DataError(f"--per-shard must be >= 1, got {per_shard}")
    if not (folder / "train").is_dir():
        raise DataError(f"{folder}: no train/ folder (expected train/<class>/ and val/)")
    names = list(_class_dirs(folder / "train"))
    classes = {n: i for i, n in enumerate(names)}
    out.mkdir(parents=True, exist_ok=True)
    if (out / INDEX).exists():
        raise DataError(f"{out} already holds shards ({INDEX}); choose an empty folder")
    splits: dict[str, Any] = {}
    for split in ("train", "val", "test"):
        src = folder / split
        if not src.is_dir():
            continue
        if split != "train" and val_labels is not None and not _class_dirs(src):
            files, labels = _list_labelled(src, Path(val_labels).expanduser(), classes)
        else:
            files, labels = _list_classes(src, classes)
        order = np.random.default_rng([seed, len(splits)]).permutation(len(files))
        shards = []
        for start in range(0, len(order), per_shard):
            name = f"{split}-{start // per_shard:06d}.tar"
            chunk = order[start : start + per_shard]
            with wds.TarWriter(str(out / name), encoder=False) as sink:
                for pos, i in enumerate(chunk, start):
                    path = src / files[i]
                    ext = path.suffix.lower().lstrip(".")
                    sink.write(
                        {
                            "__key__": f"{pos:09d}",
                            "jpg" if ext == "jpeg" else ext: path.read_bytes(),
                            "cls": str(labels[i]).encode(),
                        }
                    )
            shards.append({"file": name, "count": len(chunk)})
        splits[split] = {"shards": shards, "labels": [int(labels[i]) for i in order]}
    index = {"format": FORMAT, "classes": names, "splits": splits}
    tmp = out / (INDEX + ".tmp")
    tmp.write_text(json.dumps(index))
    tmp.replace(out / INDEX)  # the index appears last: a folder with one is complete
    return index


# ---------------------------------------------------------------- reading


class ShardSplit(StreamingSplit):
    """A split held in tar shards; ``keep`` (sorted indices into the shard set) lets a
    validation split be carved out of the training shards without rewriting them."""

    def __init__(
        self,
        base: str,
        shards: list[dict[str, Any]],
        labels: np.ndarray,
        keep: np.ndarray | None,
        train_transform: ImageTransform,
        eval_transform: ImageTransform,
        channels: int = 3,
        loader_defaults: dict[str, Any] | None = None,
        shuffle_buffer: int = 2000,
    ) -> None:
        self.base = base
        self.shards = shards
        self.labels = labels
        self.keep = np.arange(len(labels)) if keep is None else np.asarray(keep, dtype=np.int64)
        self.y = torch.from_numpy(labels[self.keep])
        self.train_transform = train_transform
        self.eval_transform = eval_transform
        self.channels = channels
        self.loader_defaults = dict(loader_defaults or {})
        self.shuffle_buffer = shuffle_buffer
        self.offsets = np.concatenate([[0], np.cumsum([s["count"] for s in shards])])

    def __len__(self) -> int:
        return len(self.keep)

    def kept_per_shard(self) -> np.ndarray:
        return np.diff(np.searchsorted(self.keep, self.offsets))

    def decode(self, sample: dict[str, Any], transform: ImageTransform, seed: int | None) -> Tensor:
        where = f"{sample.get('__url__')}: sample {sample['__key__']}"
        key = next((k for k in IMAGE_KEYS if k in sample), None)
        if key is None:
            raise DataError(f"{where} has no image (none of {', '.join(IMAGE_KEYS)})")
        mode = "L" if self.channels == 1 else "RGB"
        return transform(open_image(io.BytesIO(sample[key]), mode, where), seed)

    def samples(self, shard: int) -> Iterator[tuple[int, dict[str, Any]]]:
        """``(position in this split, raw sample)`` of the kept samples of one shard."""
        import fsspec  # noqa: PLC0415

        wds = import_webdataset()
        url = _join(self.base, self.shards[shard]["file"])
        lo = np.searchsorted(self.keep, self.offsets[shard])
        with fsspec.open(url, "rb") as stream:
            files = wds.tariterators.tar_file_expander(iter([{"url": url, "stream": stream}]))
            for sample in wds.tariterators.group_by_keys(files):
                g = int(sample["__key__"])
                pos = lo + np.searchsorted(self.keep[lo:], g)
                if pos < len(self.keep) and self.keep[pos] == g:
                    yield int(pos), sample

    def example(self, n: int) -> Tensor:
        out: list[Tensor] = []
        for shard in range(len(self.shards)):
            for _, sample in self.samples(shard):
                if len(out) >= n:
                    return torch.stack(out)
                out.append(self.decode(sample, self.eval_transform, None))
        return torch.stack(out)

    def subset(self, idx: Tensor | np.ndarray) -> ShardSplit:
        return ShardSplit(
            self.base,
            self.shards,
            self.labels,
            np.sort(self.keep[np.asarray(idx, dtype=np.int64)]),  # shard order
            self.train_transform,
            self.eval_transform,
            self.channels,
            self.loader_defaults,
            self.shuffle_buffer,
        )

    def _make_loader(self, spec: LoaderSpec) -> ShardLoader:
        return ShardLoader(self, spec)


class _ShardStream(IterableDataset):
    """What each worker runs: its shards, a seeded shuffle buffer, batching, skipping."""

    def __init__(self, split: ShardSplit, loader: ShardLoader) -> None:
        self.split = split
        self.loader = loader

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        info = get_worker_info()
        plan = self.loader.plan
        w = ((0 if info is None else info.id) + plan.rotation) % len(plan.shards)
        ld = self.loader
        transform = ld.transform
        samples = (s for shard in plan.shards[w] for s in self.split.samples(shard))
        if ld.train and self.split.shuffle_buffer > 1:
            rng = random.Random(sample_seed(ld.seed, ld.epoch, ld.rank * 65_536 + w))
            wds = import_webdataset()
            samples = wds.shuffle(self.split.shuffle_buffer, rng=rng)(iter(samples))
        batch: list[tuple[int, dict[str, Any]]] = []
        made = 0
        for item in samples:
            batch.append(item)
            if len(batch) < ld.batch_size:
                continue
            if made >= plan.skip[w]:
                yield self._collate(batch, transform)
            made += 1
            batch = []
            if made >= plan.batches[w]:
                return
        if batch and made < plan.batches[w] and made >= plan.skip[w]:
            yield self._collate(batch, transform)

    def _collate(
        self, batch: list[tuple[int, dict[str, Any]]], transform: ImageTransform
    ) -> tuple[Tensor, Tensor, Tensor]:
        ld = self.loader
        idx = torch.tensor([i for i, _ in batch], dtype=torch.long)
        x = torch.stack(
            [
                self.split.decode(
                    s, transform, sample_seed(ld.seed, ld.epoch, i) if ld.random else None
                )
                for i, s in batch
            ]
        )
        return x, self.split.y[idx], idx


class _Plan:
    """One epoch on one rank: each worker's shards, batch count and batches to skip.

    ``rotation``: the DataLoader always asks its worker 0 first; on resume the first batch
    due belongs to worker ``rotation``, so DataLoader worker ``i`` plays worker
    ``(i + rotation) % W`` and the turns continue as in the uninterrupted epoch.
    """

    def __init__(
        self, shards: list[list[int]], batches: list[int], skip: list[int], rotation: int = 0
    ) -> None:
        self.shards, self.batches, self.skip, self.rotation = shards, batches, skip, rotation


class ShardLoader:
    """Yields ``(x, y, index)`` batches from shards (see the module docstring)."""

    def __init__(self, split: ShardSplit, spec: LoaderSpec) -> None:
        self.split = split
        self.spec = spec
        self.batch_size, self.train, self.drop_last = spec.batch_size, spec.train, spec.drop_last
        self.seed, self.rank, self.world_size = spec.seed, spec.rank, spec.world_size
        self.device = spec.device
        self.workers = spec.workers
        self.transform = split.train_transform if spec.train else split.eval_transform
        self.random = spec.train and self.transform.is_random
        self.epoch = 0
        self.start_batch = 0
        self.plan = _Plan([], [], [])  # set by __iter__, read by the workers

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _worker_batches(self, epoch: int, rank: int) -> tuple[list[list[int]], list[int]]:
        n = len(self.split.shards)
        if self.train:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            order = torch.randperm(n, generator=g).tolist()
        else:
            order = list(range(n))
        mine = order[rank :: self.world_size]
        w = max(self.workers, 1)
        per_worker = [mine[i::w] for i in range(w)]
        counts = self.split.kept_per_shard()
        b = self.batch_size
        batches = []
        for shards in per_worker:
            k = int(sum(counts[s] for s in shards))
            batches.append(k // b if self.drop_last else math.ceil(k / b))
        return per_worker, batches

    def __len__(self) -> int:
        if not self.train:  # evaluation reads everything; nothing waits on other ranks
            return sum(self._worker_batches(self.epoch, self.rank)[1])
        return min(sum(self._worker_batches(self.epoch, r)[1]) for r in range(self.world_size))

    def _plan(self, start: int) -> _Plan:
        shards, batches = self._worker_batches(self.epoch, self.rank)
        total = len(self)
        # The DataLoader takes batches from its workers in turn, passing over finished ones.
        turn: list[int] = []
        for k in range(max(batches, default=0)):
            turn += [w for w in range(len(batches)) if batches[w] > k]
        turn = turn[:total]
        used = [turn.count(w) for w in range(len(batches))]  # each worker's share of the epoch
        skip = [turn[:start].count(w) for w in range(len(batches))]
        return _Plan(shards, used, skip, turn[start] if start < len(turn) else 0)

    def __iter__(self) -> Iterator[Batch]:
        self.plan = self._plan(self.start_batch)
        self.start_batch = 0
        loader = DataLoader(
            _ShardStream(self.split, self), batch_size=None, **self.spec.dataloader_kwargs()
        )
        yield from on_device(loader, self.device)


def shard_bundle(
    cfg: DataConfig, opts: dict[str, Any], transforms: tuple[Any, Any], size: tuple[int, int]
) -> DataBundle:
    """The ``imagenet`` dataset's bundle when ``data.root`` holds shards."""
    from kdlab.data.imagenet import LOADER_KEYS  # noqa: PLC0415 - it imports this module

    import_webdataset()
    root = cfg.root or ""
    base = str(Path(root).expanduser()) if "://" not in root else root
    index = read_index(root)
    splits = index.get("splits", {})
    if "train" not in splits:
        raise DataError(f"{_join(base, INDEX)}: no train split")

    def split(name: str) -> ShardSplit:
        entry = splits[name]
        return ShardSplit(
            base,
            entry["shards"],
            np.asarray(entry["labels"], dtype=np.int64),
            None,
            *transforms,
            channels=opts["channels"],
            loader_defaults={k: opts[k] for k in LOADER_KEYS},
            shuffle_buffer=int(opts["shuffle_buffer"]),
        )

    train_all = split("train")
    if "test" in splits:
        train, test = train_all, split("test")
        val = split("val") if "val" in splits else None
    elif "val" in splits:
        test = split("val")
        keep, held = stratified_split(train_all.y.numpy(), cfg.val_fraction, cfg.split_seed)
        train = train_all.subset(keep) if len(held) else train_all
        val = train_all.subset(held) if len(held) else None
    else:
        raise DataError(f"{_join(base, INDEX)}: no val split (the official validation set)")
    return DataBundle(
        train=train,
        val=val,
        test=test,
        num_classes=len(index["classes"]),
        in_channels=opts["channels"],
        image_size=size,
        name="imagenet",
        extra={"root": base, "classes": index["classes"], "streaming": True, "shards": True},
    )
