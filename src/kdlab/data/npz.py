"""Arrays from a NumPy ``.npz`` file: any labelled data a user already has in memory.

``data.root`` is the ``.npz`` file. It holds ``x`` and ``y`` and optionally ``x_test`` and
``y_test``; without them a stratified test split is carved (``data.test_fraction``). The
validation split is always carved from the training part (``data.val_fraction``), both
with ``data.split_seed``, as for digits. Accepted inputs:

- ``(N, H, W)``: grey images, given a channel axis -> ``(N, 1, H, W)``;
- ``(N, C, H, W)``: images, channels first;
- ``(N, D)``: feature vectors, kept 2-D; the bundle reports ``in_channels = D`` and
  ``image_size = (1, 1)``, so ``mlp`` with ``in_channels=D, image_size=1`` fits them.

Inputs are cast to float32 and, with ``data.normalize``, standardised with the training
split's per-channel (per-feature for 2-D) mean and std; they must be finite. Labels
must be integers in ``[0, num_classes)``, where ``num_classes`` is the largest label + 1
unless ``data.options.num_classes`` says otherwise (for classes absent from the file).
The file is read with ``allow_pickle=False``: it can hold arrays only, never code.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import torch

from kdlab.config import DataConfig
from kdlab.data import DATASETS
from kdlab.data._options import dataset_options
from kdlab.data.base import (
    DataBundle,
    TensorSplit,
    check_finite,
    check_labels,
    standardize,
    stratified_split,
)
from kdlab.errors import DataError


def _inputs(x: np.ndarray, source: str) -> np.ndarray:
    if x.dtype == object or not (
        np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.bool_)
    ):
        raise DataError(f"{source}: inputs must be numeric, got dtype {x.dtype}")
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim not in (2, 4):
        raise DataError(
            f"{source}: inputs must have shape (N, H, W), (N, C, H, W) or (N, D), got {x.shape}"
        )
    x = x.astype(np.float32)
    check_finite(x, source)
    return x


def _labels(y: np.ndarray, n: int, source: str) -> np.ndarray:
    if y.ndim != 1:
        raise DataError(f"{source}: labels must be 1-D, got shape {y.shape}")
    if y.shape[0] != n:
        raise DataError(f"{source}: {n} inputs but {y.shape[0]} labels")
    if y.size and np.issubdtype(y.dtype, np.floating) and np.all(np.mod(y, 1) == 0):
        y = y.astype(np.int64)  # integral floats (e.g. saved from a float tensor) are fine
    return y


def _infer_num_classes(labelled: list[tuple[np.ndarray, str]]) -> int:
    """Largest label + 1, after checking every label array holds integers >= 0."""
    top = 0
    for y, source in labelled:
        if y.size == 0:
            raise DataError(f"{source}: no samples")
        if not np.issubdtype(y.dtype, np.integer):
            raise DataError(f"{source}: labels must be integers, got dtype {y.dtype}")
        if int(y.min()) < 0:
            raise DataError(f"{source}: labels must be >= 0, found {int(y.min())}")
        top = max(top, int(y.max()) + 1)
    return top


@DATASETS.register("npz")
def npz(cfg: DataConfig) -> DataBundle:
    """Train/val/test splits from the arrays in the ``.npz`` file ``data.root``."""
    opts = dataset_options(cfg.name, cfg.options, {"num_classes": None})
    if cfg.root is None:
        raise DataError(
            "dataset 'npz' needs data.root: the path of an .npz file with arrays x, y "
            "(and optionally x_test, y_test)"
        )
    path = Path(cfg.root).expanduser()
    if not path.is_file():
        raise DataError(f"data.root {str(path)!r}: no such .npz file")
    try:
        loaded = np.load(path, allow_pickle=False)
        if not hasattr(loaded, "files"):  # a .npy array under an .npz name
            raise ValueError(f"it holds one array of shape {np.shape(loaded)}, not named arrays")
        with loaded as f:
            arrays = {k: f[k] for k in f.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:  # EOFError: empty file
        raise DataError(f"{path}: not a readable .npz file of plain arrays ({err})") from None
    for key in ("x", "y"):
        if key not in arrays:
            raise DataError(f"{path}: no array {key!r} (found {sorted(arrays)}); need x and y")
    if ("x_test" in arrays) != ("y_test" in arrays):
        raise DataError(f"{path}: x_test and y_test must be given together")

    x = _inputs(arrays["x"], f"{path}[x]")
    y = _labels(arrays["y"], x.shape[0], f"{path}[y]")
    has_test = "x_test" in arrays
    if has_test:
        x_test = _inputs(arrays["x_test"], f"{path}[x_test]")
        y_test = _labels(arrays["y_test"], x_test.shape[0], f"{path}[y_test]")
        if x_test.shape[1:] != x.shape[1:]:
            raise DataError(
                f"{path}: x_test samples have shape {x_test.shape[1:]}, x samples {x.shape[1:]}"
            )
    num_classes = opts["num_classes"]
    if num_classes is None:
        labelled = [(y, f"{path}[y]")] + ([(y_test, f"{path}[y_test]")] if has_test else [])
        num_classes = _infer_num_classes(labelled)
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise DataError(f"data.options.num_classes must be a positive integer, got {num_classes!r}")
    check_labels(y, num_classes, f"{path}[y]")
    if has_test:
        check_labels(y_test, num_classes, f"{path}[y_test]")
    y = y.astype(np.int64)

    if has_test:
        rest = np.arange(len(y))
    else:
        rest, test_idx = stratified_split(y, cfg.test_fraction, cfg.split_seed)
        x_test, y_test = x[test_idx], y[test_idx]
    train_idx, val_idx = stratified_split(y[rest], cfg.val_fraction, cfg.split_seed + 1)
    train_idx, val_idx = rest[train_idx], rest[val_idx]

    xt = torch.from_numpy(x)
    x_train, x_val, x_te = xt[train_idx], xt[val_idx], torch.from_numpy(x_test)
    if cfg.normalize:
        x_train, x_val, x_te = standardize(x_train, x_val, x_te)
    yt = torch.from_numpy(y)
    features = x.ndim == 2
    return DataBundle(
        train=TensorSplit(x_train, yt[train_idx]),
        val=TensorSplit(x_val, yt[val_idx]) if len(val_idx) else None,
        test=TensorSplit(x_te, torch.from_numpy(y_test.astype(np.int64))),
        num_classes=num_classes,
        in_channels=x.shape[1],
        image_size=(1, 1) if features else (x.shape[2], x.shape[3]),
        name="npz",
        extra={"root": str(path), "features": features},
    )
