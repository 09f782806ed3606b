"""MNIST-format (IDX) datasets: fashion_mnist and mnist_idx."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from kdlab.config import DataConfig
from kdlab.data import build_dataset
from kdlab.data.idx import FASHION_MNIST_ROOT, read_idx
from kdlab.errors import DataError

NAMES = {
    "train-images-idx3-ubyte": "train_x",
    "train-labels-idx1-ubyte": "train_y",
    "t10k-images-idx3-ubyte": "test_x",
    "t10k-labels-idx1-ubyte": "test_y",
}


def _idx_bytes(a: np.ndarray) -> bytes:
    """The IDX encoding written by hand from the format's definition (uint8 data)."""
    assert a.dtype == np.uint8
    return bytes([0, 0, 0x08, a.ndim]) + struct.pack(f">{a.ndim}I", *a.shape) + a.tobytes()


def _arrays(n_train: int = 40, n_test: int = 10, size: int = 5) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "train_x": rng.integers(0, 256, (n_train, size, size), dtype=np.uint8),
        "train_y": (np.arange(n_train) % 4).astype(np.uint8),
        "test_x": rng.integers(0, 256, (n_test, size, size), dtype=np.uint8),
        "test_y": (np.arange(n_test) % 4).astype(np.uint8),
    }


def _write(folder: Path, arrays: dict[str, np.ndarray], gz: bool) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, key in NAMES.items():
        data = _idx_bytes(arrays[key])
        if gz:
            (folder / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (folder / name).write_bytes(data)
    return folder


@pytest.mark.parametrize("gz", [True, False])
def test_read_idx_decodes_shape_and_values(tmp_path: Path, gz: bool) -> None:
    a = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    path = tmp_path / ("x.gz" if gz else "x")
    data = _idx_bytes(a)
    path.write_bytes(gzip.compress(data) if gz else data)
    out = read_idx(path)
    assert out.shape == (2, 3, 4) and np.array_equal(out, a)


def test_read_idx_rejects_bad_magic_and_truncated_data(tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    bad.write_bytes(b"\x01\x02\x08\x01" + struct.pack(">I", 3) + b"abc")
    with pytest.raises(DataError, match="bad: not an IDX file"):
        read_idx(bad)
    short = tmp_path / "short"
    short.write_bytes(bytes([0, 0, 8, 1]) + struct.pack(">I", 5) + b"ab")
    with pytest.raises(DataError, match=r"shape \(5,\) \(5 bytes of data\) but the file holds 2"):
        read_idx(short)


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_idx_splits_values_and_standardisation(tmp_path: Path, gz: bool) -> None:
    arrays = _arrays()
    root = _write(tmp_path / "d", arrays, gz)
    cfg = DataConfig(name="mnist_idx", root=str(root), val_fraction=0.3, split_seed=1)
    b = build_dataset(cfg)
    assert b.val is not None
    assert (b.num_classes, b.in_channels, b.image_size) == (4, 1, (5, 5))
    assert (len(b.train), len(b.val), len(b.test)) == (28, 12, 10)  # 3 of each class held
    assert torch.bincount(b.val.y).tolist() == [3, 3, 3, 3]
    # standardised with the whole training file's pixel mean and std, on [0, 1] pixels
    px = arrays["train_x"].astype(np.float64) / 255
    mean, std = px.mean(), px.std()
    assert b.extra["mean"] == pytest.approx(mean) and b.extra["std"] == pytest.approx(std)
    want_test = (arrays["test_x"].astype(np.float64) / 255 - mean) / std
    assert torch.allclose(b.test.x[:, 0].double(), torch.from_numpy(want_test), atol=1e-5)
    assert b.test.y.tolist() == arrays["test_y"].tolist()
    # train and val are disjoint and together are the training file
    raw = build_dataset(cfg.model_copy(update={"normalize": False}))
    assert raw.val is not None
    rows = {bytes((s.x[i, 0] * 255).round().byte().numpy()) for s in (raw.train, raw.val)
            for i in range(len(s))}
    assert rows == {bytes(x) for x in arrays["train_x"]}
    again = build_dataset(cfg)
    assert torch.equal(again.train.x, b.train.x) and torch.equal(again.val.y, b.val.y)


def test_train_limit_is_stratified_and_keeps_validation(tmp_path: Path) -> None:
    root = _write(tmp_path / "d", _arrays(n_train=80), gz=True)
    base = DataConfig(name="mnist_idx", root=str(root), val_fraction=0.25, normalize=False)
    full = build_dataset(base)
    cut = build_dataset(base.model_copy(update={"options": {"train_limit": 20}}))
    assert len(cut.train) == 20 and torch.bincount(cut.train.y).tolist() == [5, 5, 5, 5]
    assert full.val is not None and cut.val is not None
    assert torch.equal(full.val.x, cut.val.x)  # the limit never moves a validation image
    full_rows = {bytes(x.numpy()) for x in full.train.x}
    assert all(bytes(x.numpy()) in full_rows for x in cut.train.x)
    with pytest.raises(DataError, match="train_limit must be a positive integer, got 0"):
        build_dataset(base.model_copy(update={"options": {"train_limit": 0}}))
    with pytest.raises(DataError, match="data.options.train_limt: not an option"):
        build_dataset(base.model_copy(update={"options": {"train_limt": 5}}))


def test_missing_files_name_the_file_and_root(tmp_path: Path) -> None:
    root = _write(tmp_path / "d", _arrays(), gz=False)
    (root / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError, match=r"has no t10k-labels-idx1-ubyte \(nor .*\.gz\)") as err:
        build_dataset(DataConfig(name="mnist_idx", root=str(root)))
    assert str(root) in str(err.value)
    with pytest.raises(DataError, match="mnist_idx' needs data.root"):
        build_dataset(DataConfig(name="mnist_idx"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist") as err:
        build_dataset(DataConfig(name="fashion_mnist", root=str(empty)))
    assert "train-images-idx3-ubyte" in str(err.value) and str(empty) in str(err.value)


def test_labels_out_of_range_and_mismatched_counts(tmp_path: Path) -> None:
    arrays = _arrays()
    arrays["test_y"] = arrays["test_y"][:-1]
    root = _write(tmp_path / "d", arrays, gz=False)
    with pytest.raises(DataError, match="10 images in t10k-images-idx3-ubyte but labels"):
        build_dataset(DataConfig(name="mnist_idx", root=str(root)))
    arrays = _arrays()
    root = _write(tmp_path / "e", arrays, gz=False)
    cfg = DataConfig(name="mnist_idx", root=str(root), options={"num_classes": 3})
    with pytest.raises(DataError, match=r"labels must lie in \[0, 2\], found values in \[0, 3\]"):
        build_dataset(cfg)


@pytest.mark.skipif(
    not Path(FASHION_MNIST_ROOT, "train-images-idx3-ubyte.gz").is_file(),
    reason=f"Fashion-MNIST not installed in {FASHION_MNIST_ROOT} (apt-get install "
    "dataset-fashion-mnist)",
)
def test_fashion_mnist_real_files() -> None:
    cfg = DataConfig(name="fashion_mnist", val_fraction=0.05, options={"train_limit": 1000})
    b = build_dataset(cfg)
    assert b.val is not None
    assert (len(b.train), len(b.val), len(b.test)) == (1000, 3000, 10000)
    assert b.num_classes == 10 and b.image_size == (28, 28)
    assert torch.bincount(b.test.y).tolist() == [1000] * 10  # the official test split
    assert torch.bincount(b.train.y).tolist() == [100] * 10
    # Fashion-MNIST's training pixels: mean 0.2860, std 0.3530 (on [0, 1])
    assert b.extra["mean"] == pytest.approx(0.2860, abs=1e-4)
    assert b.extra["std"] == pytest.approx(0.3530, abs=1e-4)
    assert b.extra["classes"][9] == "Ankle boot"


def test_sparse_or_unseen_labels_are_refused_and_a_label_map_numbers_them(tmp_path: Path) -> None:
    arrays = _arrays()
    arrays["train_y"] = arrays["train_y"] + 1  # EMNIST letters style: 1..4, no class 0
    arrays["test_y"] = arrays["test_y"] + 1
    root = _write(tmp_path / "letters", arrays, gz=False)
    with pytest.raises(DataError, match=r"classes 0\.\.4: 0 never occur.*label_map: sorted"):
        build_dataset(DataConfig(name="mnist_idx", root=str(root)))
    b = build_dataset(DataConfig(name="mnist_idx", root=str(root), options={"label_map": "sorted"}))
    assert b.num_classes == 4 and b.extra["label_map"] == {1: 0, 2: 1, 3: 2, 4: 3}
    assert b.test.y.tolist() == (arrays["test_y"].astype(int) - 1).tolist()
    arrays = _arrays()
    arrays["test_y"][3] = 7  # a test class the training file lacks
    root = _write(tmp_path / "unseen", arrays, gz=False)
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte: label\(s\) 7 never occur"):
        build_dataset(DataConfig(name="mnist_idx", root=str(root)))
    wide = build_dataset(DataConfig(name="mnist_idx", root=str(root), options={"num_classes": 8}))
    assert wide.num_classes == 8  # stated explicitly: allowed
