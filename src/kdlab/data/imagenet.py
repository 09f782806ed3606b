"""ImageNet-layout image folders, streamed from disk or held in memory.

``data.root`` holds ``train/<class>/*.JPEG`` and the official validation set, either as
``val/<class>/*`` or as a flat ``val/*`` with a label file (``data.options.val_labels``),
or is a folder of WebDataset shards written by ``kdlab data shard`` (it holds
``kdlab-shards.json``; a local path or any fsspec URL, see :mod:`kdlab.data.shards`).
Class indices follow the sorted ``train`` folder names (the WordNet ids for ImageNet).

Splits. ImageNet's test labels are not public and every paper reports on the official
validation set, so ``val/`` is kdlab's **test** split, and the validation split used for
model selection is held out of ``train/`` (stratified, ``data.val_fraction``,
``data.split_seed``). A ``test/`` folder, when present, is the test split instead and
``val/`` is then the selection split.

Options (``data.options``):

- ``stream``: ``auto`` (default), ``true``, ``false``. Streaming decodes files in worker
  processes each epoch; in memory decodes every image once through the evaluation
  transform (then ``data.augment``'s batched crop/flip is the only augmentation).
  ``auto`` streams unless ``train_transform`` is ``eval`` and the decoded training split
  fits in ``memory_limit_gb`` (default 4). ``false`` with the random resized crop is an
  error (a per-sample crop cannot be applied to a tensor held in memory).
- ``image_size`` (224), ``resize`` (the evaluation's shorter side; default
  ``image_size * 256 / 224``, 256 for 224).
- ``train_transform``: ``imagenet`` (RandomResizedCrop with ``scale`` [0.08, 1] and
  ``ratio`` [3/4, 4/3], horizontal flip when ``hflip``) or ``eval`` (no augmentation).
- ``mean`` / ``std``: per channel (ImageNet's by default; ``data.normalize: false``
  keeps ``[0, 1]``); ``channels``: 3 or 1.
- ``workers`` (``auto``: CPUs per local rank, at most 16), ``prefetch`` (2 batches per
  worker), ``pin_memory`` (``auto``: on CUDA); ``backend``: ``auto`` (torchvision's
  transforms when importable), ``kdlab``, ``torchvision``.
- ``shuffle_buffer`` (shards only, 2000): samples mixed per worker on top of the
  per-epoch shard order.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import torch

from kdlab.config import DataConfig
from kdlab.data import options_for, register_dataset
from kdlab.data.base import DataBundle, Split, TensorSplit, data_root, stratified_split
from kdlab.data.folder import IMAGE_SUFFIXES, _class_dirs, _image_files, _image_size, _import_pil
from kdlab.data.stream import FolderSplit, PathList
from kdlab.data.transforms import IMAGENET_MEAN, IMAGENET_STD, imagenet_transforms
from kdlab.errors import DataError

DEFAULTS: dict[str, Any] = {
    "stream": "auto",
    "image_size": 224,
    "resize": None,
    "train_transform": "imagenet",
    "scale": [0.08, 1.0],
    "ratio": [3.0 / 4.0, 4.0 / 3.0],
    "hflip": True,
    "mean": list(IMAGENET_MEAN),
    "std": list(IMAGENET_STD),
    "channels": 3,
    "val_labels": None,
    "memory_limit_gb": 4.0,
    "workers": "auto",
    "prefetch": 2,
    "pin_memory": "auto",
    "backend": "auto",
    "shuffle_buffer": 2000,
}
LOADER_KEYS = ("workers", "prefetch", "pin_memory")


def _pair(opts: dict[str, Any], key: str) -> tuple[float, float]:
    value = opts[key]
    if (
        not isinstance(value, (list, tuple))
        or len(value) != 2
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
        or not 0 < value[0] <= value[1]
    ):
        raise DataError(
            f"data.options.{key} must be [low, high] with 0 < low <= high, got {value!r}"
        )
    return float(value[0]), float(value[1])


def transforms_from_options(cfg: DataConfig, opts: dict[str, Any]) -> tuple[Any, Any]:
    """The ``(train, eval)`` transforms the options describe."""
    size = _image_size(opts["image_size"])
    resize = opts["resize"]
    if resize is None:
        resize = int(math.floor(min(size) * 256 / 224))
    if not isinstance(resize, int) or isinstance(resize, bool) or resize < min(size):
        raise DataError(
            f"data.options.resize must be an int >= the image size {min(size)}, got {resize!r}"
        )
    if opts["train_transform"] not in ("imagenet", "eval"):
        raise DataError(
            f"data.options.train_transform must be 'imagenet' (random resized crop + flip) "
            f"or 'eval' (no augmentation), got {opts['train_transform']!r}"
        )
    channels = opts["channels"]
    if channels not in (1, 3):
        raise DataError(f"data.options.channels must be 1 or 3, got {channels!r}")
    mean = std = None
    if cfg.normalize:
        mean, std = tuple(opts["mean"]), tuple(opts["std"])
        if len(mean) != channels or len(std) != channels or min(std) <= 0:
            raise DataError(
                f"data.options.mean and std need {channels} values each (std > 0), got "
                f"{list(mean)} and {list(std)}"
            )
    return imagenet_transforms(
        size,
        resize,
        augment=opts["train_transform"] == "imagenet",
        hflip=bool(opts["hflip"]),
        scale=_pair(opts, "scale"),
        ratio=_pair(opts, "ratio"),
        mean=mean,
        std=std,
        backend=opts["backend"],
    )


def _list_classes(folder: Path, classes: dict[str, int]) -> tuple[list[str], list[int]]:
    """Relative file names and labels of a ``<class>/*`` folder, in sorted order."""
    names: list[str] = []
    labels: list[int] = []
    for name, path in _class_dirs(folder).items():
        if name not in classes:
            raise DataError(
                f"{path}: class {name!r} is not among the {len(classes)} training classes "
                f"(the sub-folders of train/)"
            )
        for file in _image_files(path):
            names.append(file.relative_to(folder).as_posix())
            labels.append(classes[name])
    if not names:
        raise DataError(
            f"{folder}: no images found (expected {folder}/<class>/*.JPEG or another of "
            f"{', '.join(sorted(IMAGE_SUFFIXES))})"
        )
    return names, labels


def read_label_file(path: Path, classes: dict[str, int]) -> dict[str, int]:
    """``file stem -> label`` from lines ``FILE,LABEL`` or ``FILE LABEL``; LABEL is a
    class (folder) name or its index; in a PredictionString (``n01751748 1 2 3 4``) the
    first word counts. A first line whose label is neither is a header and skipped."""
    if not path.is_file():
        raise DataError(f"data.options.val_labels: {str(path)!r} is not a file")
    out: dict[str, int] = {}
    with open(path, newline="") as f:
        text = f.read()
    dialect = "excel" if "," in text.split("\n", 1)[0] else "excel-tab"
    rows = (
        csv.reader(text.splitlines(), dialect)
        if dialect == "excel"
        else (line.split() for line in text.splitlines())
    )
    for n, row in enumerate(rows, 1):
        if not row or not row[0].strip():
            continue
        if len(row) < 2:
            raise DataError(f"{path}, line {n}: expected 'FILE LABEL', got {row!r}")
        label = row[1].split()[0] if row[1].split() else ""
        if label in classes:
            value = classes[label]
        elif label.isdigit() and int(label) < len(classes):
            value = int(label)
        elif n == 1:
            continue  # a header
        else:
            raise DataError(
                f"{path}, line {n}: label {label!r} is neither a training class nor an "
                f"index below {len(classes)}"
            )
        out[Path(row[0].strip()).stem] = value
    return out


def _list_labelled(
    folder: Path, labels_file: Path, classes: dict[str, int]
) -> tuple[list[str], list[int]]:
    table = read_label_file(labels_file, classes)
    names: list[str] = []
    labels: list[int] = []
    for file in _image_files(folder):
        if file.stem not in table:
            raise DataError(f"{file}: no label in {labels_file}")
        names.append(file.relative_to(folder).as_posix())
        labels.append(table[file.stem])
    if not names:
        raise DataError(f"{folder}: no images found")
    return names, labels


def _folder_split(
    folder: Path,
    listing: tuple[list[str], list[int]],
    transforms: tuple[Any, Any],
    opts: dict[str, Any],
) -> FolderSplit:
    names, labels = listing
    return FolderSplit(
        PathList.from_names(str(folder), names),
        torch.tensor(labels, dtype=torch.long),
        *transforms,
        channels=opts["channels"],
        loader_defaults={k: opts[k] for k in LOADER_KEYS},
    )


def resolve_stream(opts: dict[str, Any], n_train: int, size: tuple[int, int]) -> bool:
    """Whether to stream, from ``data.options.stream`` and the decoded split's size."""
    stream = opts["stream"]
    if stream not in ("auto", True, False):
        raise DataError(f"data.options.stream must be auto, true or false, got {stream!r}")
    random_crop = opts["train_transform"] == "imagenet"
    if stream is False and random_crop:
        raise DataError(
            "data.options.stream: false holds images in memory, where the per-sample random "
            "resized crop cannot run; set stream: true (or auto), or train_transform: eval "
            "with data.augment for batched crop and flip"
        )
    if stream == "auto":
        gib = n_train * opts["channels"] * size[0] * size[1] * 4 / 2**30
        return random_crop or gib > float(opts["memory_limit_gb"])
    return bool(stream)


def in_memory(split: FolderSplit, batch_size: int = 256) -> TensorSplit:
    """Every image decoded once (evaluation transform) by the split's own workers."""
    loader = split.loader(batch_size, train=False)
    xs = [x for x, _, _ in loader]
    return TensorSplit(torch.cat(xs), split.y.clone())


@register_dataset("imagenet", options=DEFAULTS)
def imagenet(cfg: DataConfig) -> DataBundle:
    """ImageNet-layout folders or shards (see the module docstring)."""
    opts = options_for(cfg)
    data_root(  # the check only: a root of shards may be a URL, not a path
        cfg,
        "a folder holding train/<class>/ and val/ "
        "(or a folder or URL of shards written by 'kdlab data shard')",
    )
    transforms = transforms_from_options(cfg, opts)
    size = _image_size(opts["image_size"])
    from kdlab.data import shards  # noqa: PLC0415 - circular: shards imports this module

    if shards.is_shard_root(cfg.root):
        return shards.shard_bundle(cfg, opts, transforms, size)
    root = Path(cfg.root).expanduser()
    if not (root / "train").is_dir():
        raise DataError(f"data.root {str(root)!r} has no train/ folder (expected train/<class>/)")
    _import_pil()
    names = list(_class_dirs(root / "train"))
    if not names:
        raise DataError(f"{root / 'train'}: no class sub-folders")
    classes = {n: i for i, n in enumerate(names)}
    train_all = _folder_split(
        root / "train", _list_classes(root / "train", classes), transforms, opts
    )

    def official(folder: Path) -> FolderSplit:
        if opts["val_labels"] is not None and not _class_dirs(folder):
            listing = _list_labelled(folder, Path(opts["val_labels"]).expanduser(), classes)
        else:
            listing = _list_classes(folder, classes)
        return _folder_split(folder, listing, transforms, opts)

    val: Split | None
    if (root / "test").is_dir():
        test: Split = official(root / "test")
        train: Split = train_all
        val = official(root / "val") if (root / "val").is_dir() else None
    elif (root / "val").is_dir():
        test = official(root / "val")
        keep, held = stratified_split(train_all.y.numpy(), cfg.val_fraction, cfg.split_seed)
        train = train_all.subset(keep) if len(held) else train_all
        val = train_all.subset(held) if len(held) else None
    else:
        raise DataError(f"data.root {str(root)!r} has no val/ folder (the official validation set)")
    if not resolve_stream(opts, len(train), size):
        train, test = in_memory(train), in_memory(test)  # type: ignore[arg-type]
        val = in_memory(val) if val is not None else None  # type: ignore[arg-type]
    return DataBundle(
        train=train,
        val=val,
        test=test,
        num_classes=len(classes),
        in_channels=opts["channels"],
        image_size=size,
        name="imagenet",
        extra={
            "root": str(root),
            "classes": names,
            "streaming": not isinstance(train, TensorSplit),
        },
    )
