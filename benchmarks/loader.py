"""Streaming loader throughput against the training step it must feed. A script, not a test.

Generates a tree of real JPEGs shaped like ImageNet's (``--height`` x ``--width``,
default 375 x 500, about ImageNet's median, photo-like texture so the JPEGs are
realistically sized), then measures, per worker count (``--workers 0 1 2``):

- images/s decoded and augmented by the ``imagenet`` dataset's streaming loader
  (RandomResizedCrop 224 + flip + normalise, the training transform; and the evaluation
  transform), over whole epochs after a warm-up epoch (workers started, files in the page
  cache: disk reads are not measured);

and, on the same machine and threads, the training step that consumes them: a plain
ResNet-18 step (forward, cross-entropy, backward, SGD) and a ResNet-34 -> ResNet-18 KD
step at 224x224 (median of ``--steps`` steps after a warm-up). The loader keeps up when
its images/s exceed the step's. The load average before and after is printed: the
machine is shared, so say what else ran.

    PYTHONPATH=src python benchmarks/loader.py --images 512 --batch 32
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from kdlab.config import DataConfig
from kdlab.data import build_dataset, make_loader
from kdlab.models import create_model


def make_photos(root: Path, n: int, height: int, width: int, classes: int = 10) -> None:
    """``n`` JPEGs of smooth colour fields plus noise in ``root/{train,val}/<class>/``."""
    from PIL import Image  # noqa: PLC0415

    rng = np.random.default_rng(0)
    for i in range(n):
        # runs of 10 images per class, the 10th for val: val's classes are all in train
        split = "val" if i % 10 == 9 else "train"
        folder = root / split / f"c{(i // 10) % classes}"
        folder.mkdir(parents=True, exist_ok=True)
        coarse = rng.integers(0, 256, (height // 25 + 1, width // 25 + 1, 3), dtype=np.uint8)
        img = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC))
        img = np.clip(img.astype(np.int16) + rng.integers(-20, 21, img.shape), 0, 255)
        Image.fromarray(img.astype(np.uint8)).save(folder / f"{i:06d}.jpg", quality=90)


def loader_rate(root: Path, workers: int, batch: int, train: bool, epochs: int) -> float:
    cfg = DataConfig(
        name="imagenet",
        root=str(root),
        val_fraction=0.0,
        options={"stream": True, "workers": workers, "backend": "kdlab"},
    )
    split = build_dataset(cfg).train
    loader = make_loader(split, batch, train=train, seed=0)
    n = 0
    for epoch in range(epochs + 1):  # epoch 0 warms up (workers, page cache)
        loader.set_epoch(epoch)
        if epoch == 1:
            start = time.perf_counter()
        for x, _, _ in loader:
            n += len(x) if epoch else 0
    return n / (time.perf_counter() - start)


def step_rate(batch: int, steps: int, kd: bool) -> float:
    student = create_model("resnet18", 1000)
    teacher = create_model("resnet34", 1000).eval() if kd else None
    opt = torch.optim.SGD(student.parameters(), lr=0.1, momentum=0.9)
    x = torch.randn(batch, 3, 224, 224)
    y = torch.randint(0, 1000, (batch,))
    times = []
    for i in range(steps + 1):
        t = time.perf_counter()
        logits = student(x)
        loss = F.cross_entropy(logits, y)
        if teacher is not None:
            with torch.no_grad():  # inference_mode tensors cannot enter the loss
                soft = teacher(x).softmax(1)
            loss = 0.5 * loss + 0.5 * F.kl_div(logits.log_softmax(1), soft, reduction="batchmean")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i:  # the first step warms up
            times.append(time.perf_counter() - t)
    return batch / statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    p.add_argument("--images", type=int, default=512)
    p.add_argument("--height", type=int, default=375)
    p.add_argument("--width", type=int, default=500)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--epochs", type=int, default=2, help="timed epochs after the warm-up")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=3, help="timed training steps")
    p.add_argument("--threads", type=int, default=2, help="torch threads of the step")
    args = p.parse_args()
    print(
        f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"torch {torch.__version__}; load average before: {os.getloadavg()}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t = time.perf_counter()
        make_photos(root, args.images, args.height, args.width)
        size = sum(f.stat().st_size for f in root.rglob("*.jpg")) / args.images / 1024
        print(
            f"# {args.images} JPEGs {args.height}x{args.width}, {size:.0f} KiB each on "
            f"average, made in {time.perf_counter() - t:.0f} s"
        )
        print("| what | workers | images/s |")
        print("| --- | --- | --- |")
        for workers in args.workers:
            for train in (True, False):
                rate = loader_rate(root, workers, args.batch, train, args.epochs)
                what = (
                    "decode + RandomResizedCrop 224 + flip"
                    if train
                    else ("decode + resize 256 + centre crop 224")
                )
                print(f"| {what} | {workers} | {rate:.0f} |", flush=True)
    torch.set_num_threads(args.threads)
    for kd, what in ((False, "resnet18 training step"), (True, "resnet34 -> resnet18 KD step")):
        rate = step_rate(args.batch, args.steps, kd)
        print(
            f"| {what} (batch {args.batch}, {args.threads} threads) | - | {rate:.1f} |", flush=True
        )
    print(f"# load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
