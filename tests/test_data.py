"""Datasets (digits, CIFAR pickles, npz, image folders), the loader and augmentation."""

from __future__ import annotations

import pickle
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from kdlab.config import DataConfig
from kdlab.data import DATASET_OPTIONS, DATASETS, TensorLoader, TensorSplit, build_dataset
from kdlab.data.base import check_bundle
from kdlab.data.cifar import CIFAR10_MEAN, CIFAR10_STD, CIFAR100_MEAN, CIFAR100_STD
from kdlab.errors import DataError
from kdlab.views.augment import random_crop, random_hflip


def _cfg(**kwargs: Any) -> DataConfig:
    return DataConfig(**kwargs)


# ---------------------------------------------------------------- digits


def test_digits_splits_are_deterministic_stratified_and_disjoint() -> None:
    a = build_dataset(_cfg(name="digits", split_seed=3, val_fraction=0.1, normalize=False))
    b = build_dataset(_cfg(name="digits", split_seed=3, val_fraction=0.1, normalize=False))
    c = build_dataset(_cfg(name="digits", split_seed=4, val_fraction=0.1, normalize=False))
    assert a.val is not None and b.val is not None
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.val.y, b.val.y)
    assert not torch.equal(a.test.x, c.test.x)  # another seed, another split
    sizes = (len(a.train), len(a.val), len(a.test))
    assert sum(sizes) == 1797
    # Disjoint: every image is in exactly one split (digits has a few duplicate images,
    # so compare row identities through a hash of (image bytes, label, occurrence)).
    rows = [tuple(map(bytes, s.x.numpy())) for s in (a.train, a.val, a.test)]
    all_rows = rows[0] + rows[1] + rows[2]
    from sklearn.datasets import load_digits  # noqa: PLC0415

    raw = load_digits()
    expected = sorted(bytes(r) for r in (raw.images.astype(np.float32)[:, None] / 16.0))
    assert sorted(all_rows) == expected
    # Stratified: each class's share of each split is within one sample of the fraction.
    counts = np.bincount(raw.target, minlength=10)
    test_counts = np.bincount(a.test.y.numpy(), minlength=10)
    assert np.all(np.abs(test_counts - 0.2 * counts) <= 1)
    rest = counts - test_counts
    val_counts = np.bincount(a.val.y.numpy(), minlength=10)
    assert np.all(np.abs(val_counts - 0.1 * rest) <= 1)


# ---------------------------------------------------------------- CIFAR pickles


def _write_batch(path: Path, n: int, label_key: str, num_classes: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    labels = [int(v) for v in np.arange(n) % num_classes]
    # The official files are Python 2 pickles with byte-string keys; protocol 2 with
    # bytes keys is the closest a Python 3 writer gets.
    obj = {b"batch_label": b"synthetic", b"data": data, label_key.encode(): labels}
    if label_key == "fine_labels":
        obj[b"coarse_labels"] = [v % 20 for v in labels]
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)
    return data


def _py2_str(b: bytes) -> bytes:
    """A Python 2 ``str`` opcode: SHORT_BINSTRING or BINSTRING."""
    return b"U" + bytes([len(b)]) + b if len(b) < 256 else b"T" + struct.pack("<i", len(b)) + b


def _write_py2_batch(path: Path, data: np.ndarray, labels: list[int]) -> None:
    """The bytes Python 2's cPickle (protocol 2) writes for a CIFAR batch, opcode by
    opcode: str keys, ``numpy.core.multiarray._reconstruct``, the pixels as a py2 str."""
    shape = b"".join(b"J" + struct.pack("<i", d) for d in data.shape)
    dtype = (
        b"cnumpy\ndtype\n"
        + _py2_str(b"u1")
        + b"K\x00K\x01\x87R"
        + b"(K\x03"
        + _py2_str(b"|")
        + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"
    )
    array = (
        b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n"
        + b"K\x00\x85"
        + _py2_str(b"b")
        + b"\x87R"
        + b"(K\x01("
        + shape
        + b"t"
        + dtype
        + b"\x89"
        + _py2_str(data.tobytes())
        + b"tb"
    )
    ints = b"".join(b"K" + bytes([v]) for v in labels)
    body = _py2_str(b"data") + array + _py2_str(b"labels") + b"](" + ints + b"e"
    path.write_bytes(b"\x80\x02}(" + body + b"u.")


def _fake_cifar10(parent: Path, n: int = 20) -> tuple[Path, list[np.ndarray]]:
    folder = parent / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    data = [_write_batch(folder / f"data_batch_{i}", n, "labels", 10, i) for i in range(1, 6)]
    # One batch in the official files' Python 2 format (the others as Python 3 writes).
    _write_py2_batch(folder / "data_batch_5", data[-1], [i % 10 for i in range(n)])
    data.append(_write_batch(folder / "test_batch", n, "labels", 10, 9))
    names = [f"class{i}".encode() for i in range(10)]
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": names, b"num_vis": 3072}, f, protocol=2)
    return folder, data


def test_cifar10_pickles_load_with_shapes_labels_and_standardisation(tmp_path: Path) -> None:
    folder, data = _fake_cifar10(tmp_path)
    for root in (tmp_path, folder):  # the parent or the folder itself
        bundle = build_dataset(_cfg(name="cifar10", root=str(root), val_fraction=0.2))
        assert bundle.num_classes == 10 and bundle.in_channels == 3
        assert bundle.val is not None
        assert len(bundle.train) == 80 and len(bundle.val) == 20 and len(bundle.test) == 20
        assert bundle.train.x.shape == (80, 3, 32, 32) and bundle.train.x.dtype == torch.float32
        assert bundle.extra["classes"] == [f"class{i}" for i in range(10)]
        # Stratified validation split: 100 training images, 10 per class -> 2 per class.
        assert np.bincount(bundle.val.y.numpy(), minlength=10).tolist() == [2] * 10
    # Test images in order: row-major planes R, G, B; labels i % 10; fixed statistics.
    raw = data[-1].reshape(-1, 3, 32, 32).astype(np.float64) / 255.0
    mean = np.array(CIFAR10_MEAN).reshape(1, 3, 1, 1)
    std = np.array(CIFAR10_STD).reshape(1, 3, 1, 1)
    np.testing.assert_allclose(bundle.test.x.numpy(), (raw - mean) / std, rtol=1e-5, atol=1e-5)
    assert bundle.test.y.tolist() == [i % 10 for i in range(20)]
    # Every training image came through, the Python 2 batch's included.
    seen = torch.cat([bundle.train.x, bundle.val.x]).flatten(1)
    raw_train = np.concatenate(data[:5]).reshape(-1, 3, 32, 32).astype(np.float64) / 255.0
    want = torch.from_numpy((raw_train - mean) / std).float().flatten(1)
    assert sorted(map(tuple, seen.round(decimals=3).tolist())) == sorted(
        map(tuple, want.round(decimals=3).tolist())
    )
    plain = build_dataset(_cfg(name="cifar10", root=str(tmp_path), normalize=False))
    np.testing.assert_allclose(plain.test.x.numpy(), raw, atol=1e-6)


def test_cifar100_fine_and_coarse_labels(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    _write_batch(folder / "train", 200, "fine_labels", 100, 0)
    test = _write_batch(folder / "test", 100, "fine_labels", 100, 1)
    fine = build_dataset(_cfg(name="cifar100", root=str(tmp_path), val_fraction=0.0))
    assert fine.num_classes == 100 and fine.val is None and len(fine.train) == 200
    assert fine.test.y.tolist() == list(range(100))
    assert fine.extra["classes"] is None  # no meta file: names unknown, data still fine
    raw = test.reshape(-1, 3, 32, 32)[:, 1].astype(np.float64) / 255.0  # green plane
    expected = (raw - CIFAR100_MEAN[1]) / CIFAR100_STD[1]
    np.testing.assert_allclose(fine.test.x[:, 1].numpy(), expected, rtol=1e-5, atol=1e-5)
    coarse = build_dataset(
        _cfg(name="cifar100", root=str(folder), options={"labels": "coarse"}, val_fraction=0)
    )
    assert coarse.num_classes == 20 and coarse.test.y.tolist() == [i % 20 for i in range(100)]


def test_cifar_missing_folder_and_wrong_layout_name_path_and_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="set data.root"):
        build_dataset(_cfg(name="cifar10"))
    with pytest.raises(DataError, match="nowhere.*not a folder.*cifar-10-batches-py"):
        build_dataset(_cfg(name="cifar10", root=str(tmp_path / "nowhere")))
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    _write_batch(folder / "train", 10, "fine_labels", 100, 0)
    with pytest.raises(DataError, match=r"cifar-100-python/\{train, test\}.*missing in .*: test"):
        build_dataset(_cfg(name="cifar100", root=str(tmp_path)))
    with pytest.raises(DataError, match="data_batch_1"):
        build_dataset(_cfg(name="cifar10", root=str(tmp_path)))


def test_cifar_bad_contents_raise_data_error(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    _write_batch(folder / "train", 10, "fine_labels", 100, 0)
    with open(folder / "test", "wb") as f:  # labels out of range
        pickle.dump({b"data": np.zeros((2, 3072), np.uint8), b"fine_labels": [0, 100]}, f, 2)
    with pytest.raises(DataError, match=r"test \(fine_labels\).*\[0, 99\].*\[0, 100\]"):
        build_dataset(_cfg(name="cifar100", root=str(tmp_path)))
    with open(folder / "test", "wb") as f:  # wrong image size
        pickle.dump({b"data": np.zeros((2, 100), np.uint8), b"fine_labels": [0, 1]}, f, 2)
    with pytest.raises(DataError, match=r"shape \(N, 3072\), got \(2, 100\)"):
        build_dataset(_cfg(name="cifar100", root=str(tmp_path)))


class _Boom:
    def __reduce__(self) -> tuple[Any, ...]:
        return (print, ("this must never run",))


def test_cifar_unpickler_refuses_arbitrary_globals(tmp_path: Path, capsys: Any) -> None:
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    _write_batch(folder / "train", 10, "fine_labels", 100, 0)
    with open(folder / "test", "wb") as f:
        pickle.dump({b"data": _Boom(), b"fine_labels": [0]}, f, 2)
    with pytest.raises(DataError, match=r"refusing to load global (__builtin__|builtins)\.print"):
        build_dataset(_cfg(name="cifar100", root=str(tmp_path)))
    assert "must never run" not in capsys.readouterr().out


def test_unknown_dataset_option_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="data.options.label: .*did you mean 'labels'"):
        build_dataset(_cfg(name="cifar100", root=str(tmp_path), options={"label": "fine"}))


# ---------------------------------------------------------------- npz


def test_npz_round_trip_with_given_test_split(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 6, 6)).astype(np.float32)
    y = np.arange(40) % 4
    x_test = rng.normal(size=(8, 6, 6)).astype(np.float32)
    y_test = np.arange(8) % 4
    path = tmp_path / "arrays.npz"
    np.savez(path, x=x, y=y, x_test=x_test, y_test=y_test)
    b = build_dataset(_cfg(name="npz", root=str(path), val_fraction=0.2, normalize=False))
    assert b.num_classes == 4 and b.in_channels == 1 and b.image_size == (6, 6)
    assert b.val is not None and len(b.train) == 32 and len(b.val) == 8
    np.testing.assert_array_equal(b.test.x[:, 0].numpy(), x_test)
    assert b.test.y.tolist() == y_test.tolist()
    # Train + val is exactly x, y (as sets of (image, label) rows).
    got = sorted((bytes(r.numpy()), int(l)) for s in (b.train, b.val) for r, l in zip(s.x, s.y))
    assert got == sorted((bytes(r[None]), int(l)) for r, l in zip(x, y))


def test_npz_features_carved_test_split_and_num_classes_option(tmp_path: Path) -> None:
    x = np.random.default_rng(1).normal(size=(50, 7))
    y = np.arange(50) % 5
    path = tmp_path / "f.npz"
    np.savez(path, x=x, y=y)
    cfg = _cfg(name="npz", root=str(path), test_fraction=0.2, options={"num_classes": 8})
    b = build_dataset(cfg)
    assert b.num_classes == 8 and b.in_channels == 7 and b.train.x.shape[1:] == (7,)
    assert len(b.test) == 10 and np.bincount(b.test.y.numpy()).tolist() == [2] * 5
    # Standardised with the training split's per-feature statistics.
    assert float(b.train.x.mean(0).abs().max()) < 1e-5
    assert float((b.train.x.std(0) - 1).abs().max()) < 1e-5
    again = build_dataset(cfg)
    assert torch.equal(b.test.x, again.test.x)


@pytest.mark.parametrize(
    ("arrays", "match"),
    [
        ({"x": np.zeros((4, 3)), "y": np.array([0, 1, 2, -1])}, r"\[y\]: labels must be >= 0"),
        ({"x": np.zeros((4, 3)), "y": np.array([0.5, 1, 2, 3])}, "labels must be integers"),
        ({"x": np.array([[0.0], [np.nan]]), "y": np.array([0, 1])}, "1 input values are NaN"),
        ({"x": np.zeros((4, 3)), "y": np.array([0, 1])}, "4 inputs but 2 labels"),
        ({"x": np.zeros((4,)), "y": np.zeros(4, int)}, r"\(N, H, W\).*got \(4,\)"),
        ({"y": np.zeros(4, int)}, "no array 'x'"),
        (
            {"x": np.zeros((2, 3)), "y": np.array([0, 1]), "x_test": np.zeros((1, 3))},
            "x_test and y_test must be given together",
        ),
        (
            {
                "x": np.zeros((2, 3)),
                "y": np.array([0, 1]),
                "x_test": np.zeros((1, 3)),
                "y_test": np.array([5]),
            },
            None,
        ),
    ],
)
def test_npz_bad_contents_raise_data_error(
    tmp_path: Path, arrays: dict[str, np.ndarray], match: str | None
) -> None:
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    if match is None:  # y_test = 5 is out of range once num_classes is fixed at 3
        cfg = _cfg(name="npz", root=str(path), options={"num_classes": 3})
        with pytest.raises(DataError, match=r"y_test\]: labels must lie in \[0, 2\]"):
            build_dataset(cfg)
        return
    with pytest.raises(DataError, match=match):
        build_dataset(_cfg(name="npz", root=str(path)))


def test_npz_missing_or_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such .npz file"):
        build_dataset(_cfg(name="npz", root=str(tmp_path / "none.npz")))
    (tmp_path / "junk.npz").write_text("not a zip")
    with pytest.raises(DataError, match="not a readable .npz"):
        build_dataset(_cfg(name="npz", root=str(tmp_path / "junk.npz")))
    obj = np.empty(2, dtype=object)
    np.savez(tmp_path / "obj.npz", x=obj, y=np.array([0, 1]))
    with pytest.raises(DataError, match="not a readable .npz"):  # pickled objects refused
        build_dataset(_cfg(name="npz", root=str(tmp_path / "obj.npz")))


# ---------------------------------------------------------------- image folders


def test_image_folder_with_explicit_splits_and_carved_ones(tmp_path: Path) -> None:
    image = pytest.importorskip("PIL.Image")
    colours = {"blue": (0, 0, 255), "red": (255, 0, 0)}
    for split, n in (("train", 6), ("test", 2)):
        for name, rgb in colours.items():
            d = tmp_path / split / name
            d.mkdir(parents=True)
            for i in range(n):
                image.new("RGB", (10, 12), rgb).save(d / f"{i}.png")
    cfg = _cfg(
        name="image_folder",
        root=str(tmp_path),
        normalize=False,
        val_fraction=0.5,
        options={"image_size": [8, 4]},
    )
    b = build_dataset(cfg)
    assert b.num_classes == 2 and b.extra["classes"] == ["blue", "red"]
    assert b.val is not None and len(b.train) == 6 and len(b.val) == 6 and len(b.test) == 4
    assert b.test.x.shape == (4, 3, 8, 4) and b.image_size == (8, 4)
    # Blue (class 0) images are exactly (0, 0, 1) after scaling to [0, 1].
    for split in (b.train, b.val, b.test):
        blue = split.x[split.y == 0]
        assert torch.equal(blue, torch.tensor([0.0, 0.0, 1.0]).view(1, 3, 1, 1).expand_as(blue))
    grey = build_dataset(
        _cfg(name="image_folder", root=str(tmp_path / "train"), options={"channels": 1})
    )
    assert grey.in_channels == 1 and grey.train.x.shape[1:] == (1, 32, 32)
    assert len(grey.train) + len(grey.val or []) + len(grey.test) == 12
    (tmp_path / "test" / "green").mkdir()
    with pytest.raises(DataError, match="class 'green' is not among the training classes"):
        build_dataset(cfg)


def test_image_folder_errors(tmp_path: Path) -> None:
    pytest.importorskip("PIL.Image")
    with pytest.raises(DataError, match="no class sub-folders"):
        build_dataset(_cfg(name="image_folder", root=str(tmp_path)))
    (tmp_path / "cat").mkdir()
    (tmp_path / "cat" / "x.png").write_text("not an image")
    with pytest.raises(DataError, match=r"x.png: not a readable image"):
        build_dataset(_cfg(name="image_folder", root=str(tmp_path)))


# ---------------------------------------------------------------- loader


def _split(n: int) -> TensorSplit:
    return TensorSplit(torch.arange(n, dtype=torch.float32)[:, None], torch.arange(n) % 3)


def _order(loader: TensorLoader, epoch: int) -> list[int]:
    loader.set_epoch(epoch)
    return [int(i) for _, _, idx in loader for i in idx]


def test_loader_order_depends_only_on_seed_and_epoch() -> None:
    a = TensorLoader(_split(50), batch_size=8, shuffle=True, seed=1)
    b = TensorLoader(_split(50), batch_size=8, shuffle=True, seed=1)
    assert _order(a, 3) == _order(b, 3)
    assert _order(a, 3) != _order(a, 4)
    assert sorted(_order(a, 4)) == list(range(50))
    assert _order(TensorLoader(_split(50), 8, shuffle=True, seed=2), 3) != _order(a, 3)
    for x, y, idx in a:  # batches carry the rows their indices name
        assert torch.equal(x[:, 0], idx.float()) and torch.equal(y, idx % 3)


def test_loader_shards_are_disjoint_and_cover_the_data() -> None:
    n = 21
    shards = [
        _order(TensorLoader(_split(n), 4, shuffle=True, seed=5, rank=r, world_size=2), 2)
        for r in range(2)
    ]
    assert len(shards[0]) == len(shards[1]) == 11  # padded to an equal length
    assert set(shards[0]) | set(shards[1]) == set(range(n))
    # Disjoint except the single index repeated to pad 21 up to 22.
    assert len(set(shards[0]) & set(shards[1])) <= 1
    even = [
        _order(TensorLoader(_split(20), 4, True, seed=5, rank=r, world_size=2), 2) for r in range(2)
    ]
    assert not set(even[0]) & set(even[1]) and len(even[0] + even[1]) == 20


# ---------------------------------------------------------------- augmentation


def _shift(img: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """out[:, i, j] = img[:, i + dy, j + dx], zero outside: a crop of the padded image."""
    out = torch.zeros_like(img)
    _, h, w = img.shape
    for i in range(h):
        for j in range(w):
            if 0 <= i + dy < h and 0 <= j + dx < w:
                out[:, i, j] = img[:, i + dy, j + dx]
    return out


def test_random_crop_is_a_zero_filled_shift_within_padding() -> None:
    torch.manual_seed(0)
    x = torch.rand(24, 2, 5, 6) + 0.5  # strictly positive: zeros can only come from padding
    p = 2
    out = random_crop(x, p, torch.Generator().manual_seed(1))
    assert out.shape == x.shape
    offsets = []
    for k in range(x.shape[0]):
        matches = [
            (dy, dx)
            for dy in range(-p, p + 1)
            for dx in range(-p, p + 1)
            if torch.equal(out[k], _shift(x[k], dy, dx))
        ]
        assert len(matches) == 1, f"sample {k} is not one zero-filled shift within {p}"
        offsets.append(matches[0])
    assert len(set(offsets)) > 5  # offsets are drawn per sample
    assert torch.equal(random_crop(x, 0), x)


def test_random_hflip_flips_exactly_the_chosen_samples() -> None:
    x = torch.randn(32, 3, 4, 5)
    out = random_hflip(x, torch.Generator().manual_seed(7))
    chosen = torch.rand(32, generator=torch.Generator().manual_seed(7)) < 0.5
    assert 0 < int(chosen.sum()) < 32
    assert torch.equal(out[chosen], x[chosen].flip(3))
    assert torch.equal(out[~chosen], x[~chosen])


# ---------------------------------------------------------------- npz layouts and labels


def _npz(tmp_path: Path, name: str = "a.npz", **arrays: np.ndarray) -> str:
    np.savez(tmp_path / name, **arrays)
    return str(tmp_path / name)


def test_npz_channels_last_images_are_moved_not_misread(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 6, 6, 3)).astype(np.float32)  # (N, H, W, C)
    x[..., 1] += 5.0  # channel 1 is recognisable
    path = _npz(tmp_path, x=x, y=np.arange(30) % 3, x_test=x[:6], y_test=np.arange(6) % 3)
    b = build_dataset(_cfg(name="npz", root=path, normalize=False, val_fraction=0.0))
    assert b.in_channels == 3 and b.image_size == (6, 6) and b.extra["layout"] == "nhwc"
    np.testing.assert_array_equal(b.test.x.numpy(), x[:6].transpose(0, 3, 1, 2))
    assert float(b.test.x[:, 1].mean()) > 4.0  # channel 1 stayed one channel
    cube = _npz(tmp_path, "cube.npz", x=np.zeros((9, 4, 4, 4)), y=np.arange(9) % 3)
    with pytest.raises(DataError, match=r"\(9, 4, 4, 4\): set data.options.layout to 'nchw'"):
        build_dataset(_cfg(name="npz", root=cube))
    for layout, channels in (("nchw", 4), ("nhwc", 4)):
        cfg = _cfg(name="npz", root=cube, options={"layout": layout}, normalize=False)
        assert build_dataset(cfg).in_channels == channels
    with pytest.raises(DataError, match="layout 'ncl' needs a 3-D array, got shape"):
        build_dataset(_cfg(name="npz", root=cube, options={"layout": "ncl"}))
    with pytest.raises(DataError, match="layout must be one of nchw, nhwc, nhw, ncl"):
        build_dataset(_cfg(name="npz", root=cube, options={"layout": "chw"}))


def test_npz_sequences_stay_one_dimensional(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(40, 2, 12)).astype(np.float32)  # (N, C, L)
    x[:, 1] = x[:, 1] * 3 + 7
    path = _npz(tmp_path, x=x, y=np.arange(40) % 4)
    with pytest.raises(DataError, match=r"\(40, 2, 12\) may be grey images or sequences.*'ncl'"):
        build_dataset(_cfg(name="npz", root=path))
    b = build_dataset(_cfg(name="npz", root=path, options={"layout": "ncl"}))
    assert b.train.x.shape[1:] == (2, 12) and b.in_channels == 2 and b.image_size == (12,)
    check_bundle(b, "npz")
    # Standardised per channel over samples and positions, with the training statistics.
    torch.testing.assert_close(b.train.x.mean(dim=(0, 2)), torch.zeros(2), atol=1e-5, rtol=0)
    torch.testing.assert_close(b.train.x.std(dim=(0, 2)), torch.ones(2), atol=1e-5, rtol=0)
    grey = _npz(tmp_path, "grey.npz", x=x[:, :, :2].repeat(3, 1).repeat(3, 2), y=np.arange(40) % 4)
    assert build_dataset(_cfg(name="npz", root=grey)).train.x.shape[1:] == (1, 6, 6)  # square


def test_npz_labels_that_would_widen_the_head_are_refused(tmp_path: Path) -> None:
    x = np.random.default_rng(2).normal(size=(12, 5)).astype(np.float32)
    y = np.array([0, 1000, 2000] * 4)
    sparse = _npz(tmp_path, "sparse.npz", x=x, y=y)
    with pytest.raises(DataError, match=r"not the classes 0\.\.2000: 1, 2, 3.*label_map: sorted"):
        build_dataset(_cfg(name="npz", root=sparse))
    b = build_dataset(_cfg(name="npz", root=sparse, options={"label_map": "sorted"}))
    assert b.num_classes == 3 and b.extra["label_map"] == {0: 0, 1000: 1, 2000: 2}
    listed = build_dataset(_cfg(name="npz", root=sparse, options={"label_map": [2000, 0, 1000]}))
    assert listed.num_classes == 3
    assert sorted(listed.train.y.tolist() + listed.val.y.tolist() + listed.test.y.tolist()) == [
        0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2
    ]  # fmt: skip
    with pytest.raises(DataError, match=r"label\(s\) 2000 are not in data.options.label_map"):
        build_dataset(_cfg(name="npz", root=sparse, options={"label_map": {0: 0, 1000: 1}}))
    assert build_dataset(_cfg(name="npz", root=sparse, options={"num_classes": 2001})).num_classes
    unseen = _npz(tmp_path, "unseen.npz", x=x, y=np.arange(12) % 6, x_test=x[:2], y_test=[7, 0])
    with pytest.raises(DataError, match=r"\[y_test\]: label\(s\) 7 never occur in the training"):
        build_dataset(_cfg(name="npz", root=unseen))
    names = _npz(tmp_path, "names.npz", x=x, y=np.array(["cat", "dog", "eel"] * 4))
    with pytest.raises(DataError, match="labels must be integers.*label_map"):
        build_dataset(_cfg(name="npz", root=names))
    b = build_dataset(_cfg(name="npz", root=names, options={"label_map": "sorted"}))
    assert b.num_classes == 3 and b.extra["label_map"] == {"cat": 0, "dog": 1, "eel": 2}


@pytest.mark.parametrize(
    ("name", "option", "hint"),
    [
        ("digits", "per_class", "takes no options"),
        ("digits_classes", "train_class", "did you mean 'train_classes'"),
        ("npz", "layuot", "did you mean 'layout'"),
        ("mnist_idx", "label_mpa", "did you mean 'label_map'"),
    ],
)
def test_every_dataset_refuses_unknown_options(name: str, option: str, hint: str) -> None:
    # Checked before the builder runs: no file is needed to get the error.
    with pytest.raises(DataError, match=f"data.options.{option}: not an option of .*{hint}"):
        build_dataset(_cfg(name=name, options={option: 1}))
    kdlab_datasets = [n for n, b in DATASETS.items() if b.__module__.startswith("kdlab.")]
    assert set(kdlab_datasets) <= set(DATASET_OPTIONS)


def test_npz_sequences_train_a_1d_model_end_to_end(tmp_path: Path) -> None:
    from kdlab.config import load_config  # noqa: PLC0415
    from kdlab.engine import train  # noqa: PLC0415
    from kdlab.engine.checkpoint import load_weights  # noqa: PLC0415

    rng = np.random.default_rng(3)
    y = np.arange(60) % 3
    x = rng.normal(size=(60, 2, 16)).astype(np.float32) + y[:, None, None]  # learnable
    path = _npz(tmp_path, x=x, y=y)
    cfg = load_config(
        {
            "output_dir": str(tmp_path),
            "student": {"name": "cnn1d_tiny"},
            "data": {"name": "npz", "root": path, "options": {"layout": "ncl"}},
            "train": {"epochs": 2, "progress": False, "optimizer": {"lr": 0.1}},
        }
    )
    res = train(cfg)
    weights = load_weights(Path(res.run_dir) / "model.safetensors")
    first = next(v for k, v in weights.items() if k.endswith("conv.weight"))
    assert first.dim() == 3 and first.shape[1] == 2  # Conv1d over the 2 channels, not 2-D
    assert 0.0 <= res.test_acc_last <= 100.0
