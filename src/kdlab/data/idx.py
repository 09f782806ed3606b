"""MNIST-format (IDX) image folders: MNIST, Fashion-MNIST, KMNIST, EMNIST (no download).

``data.root`` is a folder holding the four files of the original distribution, each
gzipped (``.gz``) or not::

    train-images-idx3-ubyte   train-labels-idx1-ubyte
    t10k-images-idx3-ubyte    t10k-labels-idx1-ubyte

(the ``train-images.idx3-ubyte`` spelling of some mirrors is accepted too). Two names:

- ``fashion_mnist``: Fashion-MNIST, default root ``/usr/share/datasets/fashion-mnist``
  (Debian's ``dataset-fashion-mnist`` package installs the files there);
- ``mnist_idx``: the same reader for any folder (``data.root`` required).

The t10k files are the test split; the validation split is held out of the training
files, stratified by class (``data.val_fraction``, ``data.split_seed``), as for CIFAR.
Images become (N, 1, H, W) floats in [0, 1], standardised (``data.normalize``) with the
mean and std of every pixel of the whole training file, so the inputs are the same
whatever the validation fraction or sub-sample.

Options (``data.options``):

- ``train_limit``: keep about this many training images (after the validation split),
  stratified by class and deterministic in ``split_seed``; for quick benchmarks;
- ``num_classes``: the class count when a class is absent from the files (default:
  the largest label + 1, and then every class must occur in the training file and
  every test label in it, or the error names the labels);
- ``label_map``: ``sorted`` numbers the training file's distinct labels 0..K-1 (e.g.
  EMNIST letters, labelled 1..26), or a list / ``{label: index}`` mapping, as for npz.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np
import torch

from kdlab.config import DataConfig
from kdlab.data import options_for, register_dataset
from kdlab.data.base import DataBundle, TensorSplit, data_root, encode_labels, stratified_split
from kdlab.errors import DataError

FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
# IDX type byte -> numpy big-endian dtype (the format's definition)
_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (gzipped when its name ends in ``.gz``) as a numpy array.

    Header: two zero bytes, a type byte, the number of dimensions, then each
    dimension as a big-endian int32; the data follow, row-major.
    """
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                raw = f.read()
        else:
            raw = path.read_bytes()
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(f"{path}: cannot be read ({err})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _DTYPES:
        raise DataError(f"{path}: not an IDX file (bad magic number {raw[:4].hex() or 'empty'})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise DataError(f"{path}: IDX header cut short ({len(raw)} bytes, {ndim} dimensions)")
    shape = tuple(int(d) for d in np.frombuffer(raw, ">i4", count=ndim, offset=4))
    dtype = np.dtype(_DTYPES[raw[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header != expected:
        raise DataError(
            f"{path}: header says shape {shape} ({expected} bytes of data) but the file "
            f"holds {len(raw) - header}"
        )
    return np.frombuffer(raw, dtype, offset=header).reshape(shape)


def _locate(root: Path, stem: str) -> Path | None:
    dotted = stem.replace("-idx", ".idx")  # train-images.idx3-ubyte (some mirrors)
    for name in (stem, f"{stem}.gz", dotted, f"{dotted}.gz"):
        if (root / name).is_file():
            return root / name
    return None


def _files(root: Path, hint: str) -> dict[str, Path]:
    if not root.is_dir():
        raise DataError(
            f"data.root {str(root)!r} is not a folder; expected it to hold "
            f"{', '.join(FILES.values())} (gzipped or not){hint}"
        )
    found = {key: _locate(root, stem) for key, stem in FILES.items()}
    missing = [FILES[k] for k, p in found.items() if p is None]
    if missing:
        raise DataError(
            f"data.root {str(root)!r} has no {missing[0]} (nor {missing[0]}.gz)"
            + (f"; also missing: {', '.join(missing[1:])}" if missing[1:] else "")
            + f"{hint}"
        )
    return {k: p for k, p in found.items() if p is not None}


def _images_labels(images: Path, labels: Path) -> tuple[np.ndarray, np.ndarray]:
    x, y = read_idx(images), read_idx(labels)
    if x.ndim != 3:
        raise DataError(f"{images}: images must be 3-D (N, H, W), got shape {x.shape}")
    if y.ndim != 1 or y.shape[0] != x.shape[0]:
        raise DataError(f"{labels}: {x.shape[0]} images in {images.name} but labels {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{labels}: labels must be integers, got dtype {y.dtype}")
    return x, y.astype(np.int64)


def _scale(x: np.ndarray) -> float:
    """The value of a white pixel: 255 for bytes, 1 for float images."""
    return 255.0 if x.dtype.kind == "u" and x.dtype.itemsize == 1 else 1.0


def _to_tensor(x: np.ndarray, scale: float, stats: tuple[float, float] | None) -> torch.Tensor:
    t = torch.from_numpy(x.astype(np.float32) / scale)[:, None]
    if stats is not None:
        t.sub_(stats[0]).div_(stats[1])
    return t


def idx_bundle(cfg: DataConfig, root: Path, name: str, hint: str = "") -> DataBundle:
    """Train / val / test splits from the IDX files in ``root`` (see the module doc)."""
    opts = options_for(cfg)
    limit = opts["train_limit"]
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
        raise DataError(f"data.options.train_limit must be a positive integer, got {limit!r}")
    files = _files(root, hint)
    x_tr, y_tr = _images_labels(files["train_images"], files["train_labels"])
    x_te, y_te = _images_labels(files["test_images"], files["test_labels"])
    if x_te.shape[1:] != x_tr.shape[1:]:
        raise DataError(
            f"{files['test_images']}: images of size {x_te.shape[1:]}, but the training "
            f"images are {x_tr.shape[1:]}"
        )
    labelled = [(y_tr, str(files["train_labels"])), (y_te, str(files["test_labels"]))]
    (y_tr, y_te), num_classes, mapping = encode_labels(
        labelled, opts["num_classes"], opts["label_map"]
    )

    scale = _scale(x_tr)
    stats = None
    if cfg.normalize:  # whole training file, in float64 so 47M bytes sum exactly enough
        mean = float(x_tr.mean(dtype=np.float64)) / scale
        std = float(x_tr.std(dtype=np.float64)) / scale
        stats = (mean, max(std, 1e-6))
    keep, held = stratified_split(y_tr, cfg.val_fraction, cfg.split_seed)
    if limit is not None and limit < len(keep):
        # A stratified sub-sample of what is left for training, seeded apart from the
        # validation split so changing the limit never moves a validation image.
        _, chosen = stratified_split(y_tr[keep], limit / len(keep), cfg.split_seed + 1)
        keep = keep[chosen]
    yt = torch.from_numpy(y_tr)
    val = None
    if len(held):
        val = TensorSplit(_to_tensor(x_tr[held], scale, stats), yt[held])
    return DataBundle(
        train=TensorSplit(_to_tensor(x_tr[keep], scale, stats), yt[keep]),
        val=val,
        test=TensorSplit(_to_tensor(x_te, scale, stats), torch.from_numpy(y_te)),
        num_classes=num_classes,
        in_channels=1,
        image_size=(int(x_tr.shape[1]), int(x_tr.shape[2])),
        name=name,
        extra={
            "root": str(root),
            "mean": stats[0] if stats else None,
            "std": stats[1] if stats else None,
            "classes": FASHION_MNIST_CLASSES if name == "fashion_mnist" else None,
            "label_map": mapping,
        },
    )


IDX_OPTIONS = {"train_limit": None, "num_classes": None, "label_map": None}


@register_dataset("fashion_mnist", options=IDX_OPTIONS)
def fashion_mnist(cfg: DataConfig) -> DataBundle:
    """Fashion-MNIST: 60,000 training (minus validation) and 10,000 test 28x28 grey
    images, 10 classes; ``data.root`` defaults to ``/usr/share/datasets/fashion-mnist``."""
    root = Path(cfg.root or FASHION_MNIST_ROOT).expanduser()
    hint = (
        "; on Debian/Ubuntu `apt-get install dataset-fashion-mnist` puts them in "
        f"{FASHION_MNIST_ROOT}, or set data.root to a folder holding them"
    )
    return idx_bundle(cfg, root, "fashion_mnist", hint)


@register_dataset("mnist_idx", options=IDX_OPTIONS)
def mnist_idx(cfg: DataConfig) -> DataBundle:
    """Any MNIST-format folder (MNIST, KMNIST, EMNIST...): ``data.root`` required."""
    root = data_root(cfg, f"a folder holding {', '.join(FILES.values())} (gzipped or not)")
    return idx_bundle(cfg, root, "mnist_idx")
