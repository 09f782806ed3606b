"""CIFAR-10 and CIFAR-100 from the python-pickle batches in a local folder (no download).

``data.root`` names the extracted archive folder or its parent:

- ``cifar10``: ``cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}``
- ``cifar100``: ``cifar-100-python/{train, test, meta}``

The official test set is the test split; the validation split is carved from the
training set, stratified by class (``data.val_fraction``, ``data.split_seed``). Images
are 3x32x32 floats standardised with the fixed per-channel mean and std of the CIFAR
training set (pixels scaled to [0, 1] first):

- CIFAR-10: mean (0.4914, 0.4822, 0.4465), std (0.2470, 0.2435, 0.2616): the per-pixel
  statistics of the 50,000 training images (the often-copied std (0.2023, 0.1994,
  0.2010) is not the pixel std);
- CIFAR-100: mean (0.5071, 0.4867, 0.4408), std (0.2675, 0.2565, 0.2761), the values
  RepDistiller uses.

Fixed constants keep the inputs identical whatever ``val_fraction`` is, and match the
reference protocol. Options: ``data.options.labels`` = ``fine`` (default, 100 classes)
or ``coarse`` (20 superclasses) for CIFAR-100.

The batches are pickles. Unpickling can run arbitrary code, so they are read with a
restricted unpickler that resolves only the few globals a pickled numpy array needs
(``numpy.ndarray``, ``numpy.dtype``, the array reconstructors and ``_codecs.encode``
for bytes); any other class or function in the file is refused with a DataError.
"""

from __future__ import annotations

import importlib
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kdlab.config import DataConfig
from kdlab.data import options_for, register_dataset
from kdlab.data.base import DataBundle, TensorSplit, check_labels, stratified_split
from kdlab.errors import DataError

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4867, 0.4408)
CIFAR100_STD = (0.2675, 0.2565, 0.2761)

# (module, name) pairs a pickled numpy array (or bytes, under protocol 2) may reference.
_SAFE_GLOBALS = {
    ("_codecs", "encode"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy._core.numeric", "_frombuffer"),
}


class _ArrayUnpickler(pickle.Unpickler):
    """Resolves only numpy array machinery; refuses every other global."""

    def find_class(self, module: str, name: str) -> Any:
        if module.startswith("numpy.core."):  # pickles written under numpy 1.x
            module = "numpy._core." + module[len("numpy.core.") :]
        if (module, name) not in _SAFE_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")
        if module.startswith("numpy._core.") and not hasattr(np, "_core"):  # numpy < 2
            module = "numpy.core." + module[len("numpy._core.") :]
        return getattr(importlib.import_module(module), name)


def load_pickle(path: Path) -> dict[str, Any]:
    """A CIFAR batch: a dict with str keys (Python 2 byte strings decoded as latin-1)."""
    try:
        with open(path, "rb") as f:
            obj = _ArrayUnpickler(f, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as err:
        raise DataError(f"{path}: not a readable CIFAR python batch ({err})") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a pickled dict, got {type(obj).__name__}")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _find_folder(cfg: DataConfig, folder: str, files: list[str]) -> Path:
    """``data.root`` itself if it holds ``files``, else ``data.root/folder``."""
    expected = f"{folder}/{{{', '.join(files)}}}"
    if cfg.root is None:
        raise DataError(
            f"dataset {cfg.name!r} is read from disk: set data.root to the folder holding "
            f"{expected} (or to that folder itself)"
        )
    root = Path(cfg.root).expanduser()
    if not root.is_dir():
        raise DataError(f"data.root {str(root)!r} is not a folder; expected it to hold {expected}")
    for candidate in (root, root / folder):
        if all((candidate / f).is_file() for f in files):
            return candidate
    base = root / folder if (root / folder).is_dir() else root
    missing = [f for f in files if not (base / f).is_file()]
    raise DataError(
        f"data.root {str(root)!r} does not hold the {cfg.name} python batches: expected "
        f"{expected} in it (or those files in it directly); missing in {str(base)!r}: "
        + ", ".join(missing)
    )


def _read_batches(folder: Path, names: list[str], label_key: str) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for name in names:
        path = folder / name
        batch = load_pickle(path)
        for key in ("data", label_key):
            if key not in batch:
                raise DataError(f"{path}: no {key!r} entry (found {sorted(batch)})")
        data = np.asarray(batch["data"])
        labels = np.asarray(batch[label_key])
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise DataError(f"{path}: 'data' must have shape (N, 3072), got {data.shape}")
        if labels.shape != (data.shape[0],):
            raise DataError(f"{path}: {data.shape[0]} images but labels of shape {labels.shape}")
        xs.append(data)
        ys.append(labels)
    return np.concatenate(xs), np.concatenate(ys)


Stats = tuple[tuple[float, float, float], tuple[float, float, float]]


def _to_tensor(data: np.ndarray, stats: Stats | None) -> torch.Tensor:
    """uint8 rows (R plane, G plane, B plane) -> float (N, 3, 32, 32), standardised."""
    x = torch.from_numpy(np.ascontiguousarray(data, dtype=np.uint8)).view(-1, 3, 32, 32)
    x = x.float().div_(255.0)
    if stats is not None:
        mean, std = (torch.tensor(s).view(1, 3, 1, 1) for s in stats)
        x.sub_(mean).div_(std)
    return x


def _build(
    cfg: DataConfig,
    folder: Path,
    files: tuple[list[str], list[str]],
    label_key: str,
    num_classes: int,
    stats: Stats,
    classes: list[str] | None,
) -> DataBundle:
    (x_train, y_train), (x_test, y_test) = (_read_batches(folder, f, label_key) for f in files)
    check_labels(y_train, num_classes, f"{folder / files[0][0]} ({label_key})")
    check_labels(y_test, num_classes, f"{folder / files[1][0]} ({label_key})")
    y_train, y_test = y_train.astype(np.int64), y_test.astype(np.int64)
    norm = stats if cfg.normalize else None
    # Split the uint8 images before converting, so only one float copy is ever made.
    keep, held = stratified_split(y_train, cfg.val_fraction, cfg.split_seed)
    train = TensorSplit(_to_tensor(x_train[keep], norm), torch.from_numpy(y_train[keep]))
    val = None
    if len(held):
        val = TensorSplit(_to_tensor(x_train[held], norm), torch.from_numpy(y_train[held]))
    test = TensorSplit(_to_tensor(x_test, norm), torch.from_numpy(y_test))
    return DataBundle(
        train=train,
        val=val,
        test=test,
        num_classes=num_classes,
        in_channels=3,
        image_size=(32, 32),
        name=cfg.name,
        extra={
            "root": str(folder),
            "classes": classes,
            "mean": norm[0] if norm else None,
            "std": norm[1] if norm else None,
        },
    )


def _label_names(path: Path, key: str) -> list[str] | None:
    if not path.is_file():
        return None
    names = load_pickle(path).get(key)
    return [n.decode() if isinstance(n, bytes) else str(n) for n in names] if names else None


@register_dataset("cifar10")
def cifar10(cfg: DataConfig) -> DataBundle:
    """CIFAR-10: 50,000 training (minus validation) and 10,000 test images, 10 classes."""
    train_files = [f"data_batch_{i}" for i in range(1, 6)]
    folder = _find_folder(cfg, "cifar-10-batches-py", [*train_files, "test_batch"])
    classes = _label_names(folder / "batches.meta", "label_names")
    stats = (CIFAR10_MEAN, CIFAR10_STD)
    return _build(cfg, folder, (train_files, ["test_batch"]), "labels", 10, stats, classes)


@register_dataset("cifar100", options={"labels": "fine"})
def cifar100(cfg: DataConfig) -> DataBundle:
    """CIFAR-100: 50,000 training (minus validation) and 10,000 test images, 100 classes
    (``data.options.labels: coarse`` for the 20 superclasses)."""
    opts = options_for(cfg)
    if opts["labels"] not in ("fine", "coarse"):
        raise DataError(f"data.options.labels must be 'fine' or 'coarse', got {opts['labels']!r}")
    folder = _find_folder(cfg, "cifar-100-python", ["train", "test"])
    kind = opts["labels"]
    classes = _label_names(folder / "meta", f"{kind}_label_names")
    n = 100 if kind == "fine" else 20
    stats = (CIFAR100_MEAN, CIFAR100_STD)
    return _build(cfg, folder, (["train"], ["test"]), f"{kind}_labels", n, stats, classes)
