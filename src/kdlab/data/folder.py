"""Image folders (one sub-folder per class), loaded into memory as tensors.

``data.root`` is laid out either as

- ``root/train/<class>/*.png`` with optional ``root/val/<class>/...`` and
  ``root/test/<class>/...``; a missing ``val`` or ``test`` is carved from ``train``
  (stratified, ``data.val_fraction`` / ``data.test_fraction``, ``data.split_seed``); or
- ``root/<class>/*.png``: test and validation splits are both carved, as for digits.

Class indices follow the sorted class-folder names of ``train`` (or of ``root``); a
class in ``val``/``test`` that ``train`` lacks is an error. Images (png, jpg, jpeg, bmp,
gif, webp, ppm, pgm, tif, tiff) are converted to RGB (``data.options.channels: 1`` for
grey), resized to ``data.options.image_size`` (an int or ``[height, width]``, default 32)
with bilinear interpolation, scaled to [0, 1] and, with ``data.normalize``, standardised
with the training split's per-channel mean and std. Everything is held in memory: meant
for small and medium datasets. Needs Pillow (``pip install 'kdlab[vision]'``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from kdlab.config import DataConfig
from kdlab.data import options_for, register_dataset
from kdlab.data.base import DataBundle, TensorSplit, data_root, standardize, stratified_split
from kdlab.errors import DataError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".ppm", ".pgm", ".tif", ".tiff"}
SPLITS = ("train", "val", "test")


def _import_pil() -> Any:
    try:
        from PIL import Image  # noqa: PLC0415 - optional extra
    except ImportError:
        raise DataError(
            "dataset 'image_folder' needs Pillow to read images; install the extra: "
            "pip install 'kdlab[vision]'"
        ) from None
    return Image


def _class_dirs(folder: Path) -> dict[str, Path]:
    dirs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    return {p.name: p for p in dirs}


def _image_files(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    )


def _image_size(value: Any) -> tuple[int, int]:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value, value
    if (
        isinstance(value, (list, tuple))
        and len(value) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)
    ):
        return int(value[0]), int(value[1])
    raise DataError(
        f"data.options.image_size must be a positive int or [height, width], got {value!r}"
    )


def _load_split(
    folder: Path, classes: dict[str, int], size: tuple[int, int], mode: str, image: Any
) -> tuple[torch.Tensor, torch.Tensor]:
    xs: list[np.ndarray] = []
    ys: list[int] = []
    for name, path in _class_dirs(folder).items():
        if name not in classes:
            raise DataError(
                f"{path}: class {name!r} is not among the training classes "
                f"({', '.join(sorted(classes))})"
            )
        for file in _image_files(path):
            try:
                with image.open(file) as img:
                    img = img.convert(mode).resize((size[1], size[0]), image.BILINEAR)
                    arr = np.asarray(img, dtype=np.uint8)
            except (OSError, ValueError) as err:
                raise DataError(f"{file}: not a readable image ({err})") from None
            xs.append(arr[:, :, None] if arr.ndim == 2 else arr)
            ys.append(classes[name])
    if not xs:
        raise DataError(
            f"{folder}: no images found (expected {folder}/<class>/*.png or another of "
            f"{', '.join(sorted(IMAGE_SUFFIXES))})"
        )
    x = torch.from_numpy(np.stack(xs)).permute(0, 3, 1, 2).float().div_(255.0)
    return x.contiguous(), torch.tensor(ys, dtype=torch.long)


@register_dataset("image_folder", options={"image_size": 32, "channels": 3})
def image_folder(cfg: DataConfig) -> DataBundle:
    """Splits from a class-per-folder image tree (see the module docstring)."""
    opts = options_for(cfg)
    size = _image_size(opts["image_size"])
    if opts["channels"] not in (1, 3):
        raise DataError(f"data.options.channels must be 1 or 3, got {opts['channels']!r}")
    mode = "L" if opts["channels"] == 1 else "RGB"
    root = data_root(
        cfg,
        "a folder holding train/<class>/ "
        "(and optionally val/, test/) or <class>/ sub-folders of images",
    )
    if not root.is_dir():
        raise DataError(f"data.root {str(root)!r} is not a folder")
    image = _import_pil()

    split_mode = (root / "train").is_dir()
    if not split_mode and any((root / s).is_dir() for s in ("val", "test")):
        raise DataError(
            f"{root}: has val/ or test/ but no train/ folder; expected {root}/train/<class>/"
        )
    train_dir = root / "train" if split_mode else root
    names = list(_class_dirs(train_dir))
    if not names:
        raise DataError(
            f"{train_dir}: no class sub-folders; expected {root}/train/<class>/*.png "
            f"(with optional val/ and test/) or {root}/<class>/*.png"
        )
    classes = {n: i for i, n in enumerate(names)}
    x, y = _load_split(train_dir, classes, size, mode, image)
    given = {
        s: _load_split(root / s, classes, size, mode, image)
        for s in ("val", "test")
        if split_mode and (root / s).is_dir()
    }
    y_np = y.numpy()
    rest = np.arange(len(y_np))
    if "test" in given:
        x_test, y_test = given["test"]
    else:
        rest, held = stratified_split(y_np, cfg.test_fraction, cfg.split_seed)
        x_test, y_test = x[held], y[held]
    if "val" in given:
        x_val, y_val = given["val"]
        train_idx = rest
    else:
        keep, held = stratified_split(y_np[rest], cfg.val_fraction, cfg.split_seed + 1)
        train_idx = rest[keep]
        x_val, y_val = x[rest[held]], y[rest[held]]
    x_train, y_train = x[train_idx], y[train_idx]
    if cfg.normalize:
        x_train, x_val, x_test = standardize(x_train, x_val, x_test)
    return DataBundle(
        train=TensorSplit(x_train, y_train),
        val=TensorSplit(x_val, y_val) if len(y_val) else None,
        test=TensorSplit(x_test, y_test),
        num_classes=len(classes),
        in_channels=opts["channels"],
        image_size=size,
        name="image_folder",
        extra={"root": str(root), "classes": names},
    )
