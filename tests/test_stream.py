"""The streaming data path: image folders read by worker processes, and WebDataset shards.

A tree of real JPEGs is generated from the bundled digits (64x64, 10 classes, 300 training
images); the in-memory reader (``image_folder``) is the independent reference for what
the streaming reader (``imagenet``) must yield.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import torch.distributed as tdist
import torch.multiprocessing as mp

from kdlab.cli import main
from kdlab.config import DataConfig
from kdlab.data import build_dataset, make_loader
from kdlab.data.base import TensorSplit, check_bundle
from kdlab.data.imagetree import make_image_tree
from kdlab.data.loader import epoch_order
from kdlab.data.stream import FolderSplit
from kdlab.engine.distributed import free_port
from kdlab.errors import DataError

PER_CLASS = {"train": 30, "val": 5, "test": 5}  # 300 / 50 / 50 images


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_image_tree(tmp_path_factory.mktemp("tree"), size=64, splits=PER_CLASS)


def _stream(root: Path | str, val_fraction: float = 0.1, **options: object) -> DataConfig:
    opts = {"image_size": 64, "resize": 64, "workers": 2, "stream": True, **options}
    return DataConfig(
        name="imagenet", root=str(root), normalize=False, val_fraction=val_fraction, options=opts
    )


def _batches(loader, epoch: int) -> list[tuple[torch.Tensor, ...]]:  # noqa: ANN001
    loader.set_epoch(epoch)
    return list(loader)


def _same(a: list, b: list) -> bool:  # noqa: ANN001
    return len(a) == len(b) and all(
        all(torch.equal(u, v) for u, v in zip(p, q)) for p, q in zip(a, b)
    )


# ---------------------------------------------------------------- folders


def test_streamed_batches_equal_the_in_memory_path(tree: Path) -> None:
    """Same files, same order, augmentation off: identical (x, y, index) batches."""
    memory = build_dataset(
        DataConfig(name="image_folder", root=str(tree), normalize=False, options={"image_size": 64})
    )
    stream = build_dataset(_stream(tree, train_transform="eval"))
    assert isinstance(stream.train, FolderSplit) and isinstance(memory.train, TensorSplit)
    assert len(stream.train) == len(memory.train) == 300
    assert torch.equal(stream.train.y, memory.train.y)
    for split, train in (("train", True), ("test", False)):
        kw = {"batch_size": 32, "train": train, "seed": 5}
        got = _batches(make_loader(getattr(stream, split), **kw), epoch=2)
        want = _batches(make_loader(getattr(memory, split), **kw), epoch=2)
        assert len(got) == (9 if train else 2)  # 300 // 32 with drop_last; 50 in 2
        assert _same(got, want)


def test_resume_mid_epoch_with_workers_gives_the_remaining_batches(tree: Path) -> None:
    """Random resized crop + flip on: batches k.. of a fresh loader started at k equal an
    uninterrupted epoch's, whatever the worker count."""
    bundle = build_dataset(_stream(tree, image_size=48, resize=56))
    loader = make_loader(bundle.train, 16, train=True, seed=7)
    full = _batches(loader, epoch=3)
    assert len(full) == len(loader) == 300 // 16
    for workers in (2, 0):
        resumed = make_loader(bundle.train, 16, train=True, seed=7, workers=workers)
        resumed.set_epoch(3)
        resumed.start_batch = 5
        assert _same(list(resumed), full[5:])
    # The augmentation really is random per epoch (same order would still differ).
    other = _batches(make_loader(bundle.train, 16, train=True, seed=7), epoch=4)
    assert not torch.equal(full[0][0], other[0][0])


def test_ranks_take_distributed_sampler_shares(tree: Path) -> None:
    bundle = build_dataset(_stream(tree, train_transform="eval", workers=1))
    seen = []
    for rank in (0, 1):
        loader = make_loader(bundle.train, 10, train=True, seed=1, rank=rank, world_size=2)
        seen.append(torch.cat([idx for _, _, idx in _batches(loader, epoch=0)]))
    order = epoch_order(300, True, seed=1, epoch=0)
    assert torch.equal(seen[0], order[0::2]) and torch.equal(seen[1], order[1::2])


def test_checks_and_options(tree: Path, tmp_path: Path) -> None:
    bundle = build_dataset(_stream(tree))
    check_bundle(bundle)  # cheap for streaming splits: labels and two decoded images
    assert bundle.train.example(3).shape == (3, 3, 64, 64)
    with pytest.raises(DataError, match="stream: false"):
        build_dataset(_stream(tree, stream=False))
    with pytest.raises(DataError, match="did you mean 'workers'"):
        build_dataset(_stream(tree, worker=2))
    with pytest.raises(DataError, match="no train/ folder"):
        build_dataset(_stream(tree / "train"))
    (tmp_path / "t").mkdir()
    os.symlink(tree / "train", tmp_path / "t" / "train")
    with pytest.raises(DataError, match="no val/ folder"):
        build_dataset(_stream(tmp_path / "t"))
    with pytest.raises(DataError, match="workers must be 'auto' or an int >= 0"):
        make_loader(bundle.test, 8, train=False, workers=-1)
    with pytest.raises(DataError, match="did you mean 'prefetch'"):
        make_loader(bundle.test, 8, train=False, prefetchs=4)
    # Small enough and no random crop: auto holds it in memory, decoded once.
    small = build_dataset(_stream(tree, train_transform="eval", stream="auto"))
    assert isinstance(small.train, TensorSplit) and small.train.x.shape == (300, 3, 64, 64)
    # A broken file is named by the loader, in one line.
    broken = tmp_path / "b"
    (broken / "train" / "a").mkdir(parents=True)
    (broken / "val" / "a").mkdir(parents=True)
    (broken / "train" / "a" / "x.jpg").write_bytes(b"not a jpeg")
    (broken / "val" / "a" / "y.jpg").write_bytes(b"not a jpeg")
    split = build_dataset(_stream(broken, workers=1, train_transform="eval")).test
    with pytest.raises(DataError, match=r"y\.jpg: not a readable image") as err:
        list(make_loader(split, 4, train=False))
    assert "\n" not in str(err.value)


def test_flat_validation_folder_with_a_label_file(tree: Path, tmp_path: Path) -> None:
    root = tmp_path / "flat"
    (root / "val").mkdir(parents=True)
    os.symlink(tree / "train", root / "train")
    lines = ["ImageId,PredictionString"]  # the Kaggle LOC_val_solution.csv layout
    for c in (3, 7):
        src = next((tree / "val" / f"digit{c}").iterdir())
        (root / "val" / f"v{c}.jpg").write_bytes(src.read_bytes())
        lines.append(f"v{c},digit{c} 1 2 3 4")
    labels = tmp_path / "labels.csv"
    labels.write_text("\n".join(lines) + "\n")
    bundle = build_dataset(_stream(root, val_labels=str(labels)))
    assert bundle.test.y.tolist() == [3, 7]  # val/ is the test split: no test/ folder
    assert bundle.val is not None and len(bundle.val) == 30 and len(bundle.train) == 270
    assert torch.equal(bundle.val.y.bincount(), torch.full((10,), 3))  # stratified hold-out
    labels.write_text("v3 digit3\nv7 12\n")
    with pytest.raises(DataError, match="line 2: label '12'"):
        build_dataset(_stream(root, val_labels=str(labels)))


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="reads RSS from /proc")
def test_memory_stays_flat_streaming_ten_times_the_data(tree: Path, tmp_path: Path) -> None:
    """Stream a tree of 3,000 images (the 300 hard-linked ten times): the main process
    grows by less than a quarter of what holding the 300 in memory takes (14.7 MB)."""
    big = tmp_path / "big"
    for split in ("train", "val"):
        for src in (tree / split).rglob("*.jpg"):
            for copy in range(10 if split == "train" else 1):
                dst = big / split / src.parent.name / f"{copy}_{src.name}"
                dst.parent.mkdir(parents=True, exist_ok=True)
                os.link(src, dst)
    in_memory = 300 * 3 * 64 * 64 * 4
    bundle = build_dataset(_stream(big, image_size=64, resize=72, val_fraction=0.0))
    assert len(bundle.train) == 3000
    loader = make_loader(bundle.train, 32, train=True, seed=0)
    loader.set_epoch(0)
    peak = warm = 0
    for b, (x, _, _) in enumerate(loader):
        if b == 4:
            warm = _rss_bytes()  # workers up, allocator warm
        elif b > 4:
            peak = max(peak, _rss_bytes())
        del x
    assert b == 3000 // 32 - 1
    assert peak - warm < in_memory / 4, (peak - warm) / 2**20


# ---------------------------------------------------------------- shards

wds = pytest.importorskip("webdataset", reason="shards need the 'shards' extra")


@pytest.fixture(scope="module")
def shards(tree: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("shards")
    assert main(["data", "shard", str(tree), str(out), "--per-shard", "25"]) == 0
    return out


def test_shard_command_writes_every_split_and_labels(shards: Path, tree: Path) -> None:
    index = json.loads((shards / "kdlab-shards.json").read_text())
    assert [len(index["splits"][s]["shards"]) for s in ("train", "val", "test")] == [12, 2, 2]
    assert index["classes"] == [f"digit{c}" for c in range(10)]
    labels = index["splits"]["train"]["labels"]
    assert sorted(labels) == sorted(c for c in range(10) for _ in range(30))
    assert labels[:30] != sorted(labels[:30])  # written in a shuffled order
    assert main(["data", "shard", str(tree), str(shards)]) == 2  # refuses to overwrite


def test_shard_resume_and_labels(shards: Path) -> None:
    cfg = _stream(shards, image_size=48, resize=56, shuffle_buffer=40)
    bundle = build_dataset(cfg)
    assert len(bundle.train) == 300 and len(bundle.test) == 50
    loader = make_loader(bundle.train, 16, train=True, seed=2)
    full = _batches(loader, epoch=1)
    idx = torch.cat([i for _, _, i in full])
    assert len(set(idx.tolist())) == len(idx) == 16 * len(loader)
    assert torch.equal(torch.cat([y for _, y, _ in full]), bundle.train.y[idx])
    loader.set_epoch(1)
    loader.start_batch = 7
    assert _same(list(loader), full[7:])
    test = torch.cat([i for _, _, i in _batches(make_loader(bundle.test, 16, train=False), 0)])
    assert sorted(test.tolist()) == list(range(50))


def test_shards_from_an_fsspec_url(shards: Path) -> None:
    a = build_dataset(_stream(shards, workers=0, train_transform="eval")).test
    b = build_dataset(_stream(f"file://{shards}", workers=0, train_transform="eval")).test
    assert _same(_batches(make_loader(a, 25, False), 0), _batches(make_loader(b, 25, False), 0))


def _rank_reads(rank: int, port: int, root: str, out: str) -> None:
    tdist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        cfg = DataConfig(
            name="imagenet",
            root=root,
            val_fraction=0.0,
            options={"image_size": 32, "resize": 36, "workers": 2, "shuffle_buffer": 20},
        )
        train = build_dataset(cfg).train
        loader = make_loader(train, 15, train=True, seed=4, rank=rank, world_size=2)
        loader.set_epoch(0)
        mine = [int(i) for _, _, idx in loader for i in idx]
        got: list = [None, None]
        tdist.all_gather_object(got, (len(loader), mine))
        if rank == 0:
            Path(out).write_text(json.dumps(got))
    finally:
        tdist.destroy_process_group()


def test_two_gloo_ranks_read_disjoint_shards_that_cover_the_set(
    shards: Path, tmp_path: Path
) -> None:
    out = tmp_path / "reads.json"
    # fork: the ranks need nothing re-imported (spawn would cost seconds per process)
    args = (free_port(), str(shards), str(out))
    mp.start_processes(_rank_reads, args=args, nprocs=2, join=True, start_method="fork")
    (len0, read0), (len1, read1) = json.loads(out.read_text())
    assert len0 == len1 == 10  # 150 samples per rank in batches of 15
    assert sorted(read0 + read1) == list(range(300))  # no duplicate, nothing missed
    assert {i // 25 for i in read0}.isdisjoint({i // 25 for i in read1})  # whole shards
