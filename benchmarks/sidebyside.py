"""kdlab's training step side by side with RepDistiller's own ``train_distill``.

``python benchmarks/perf.py --vs-repdistiller PATH`` (PATH: a checkout of
HobbitLong/RepDistiller, outside this repository) runs both in ONE process on the same
synthetic CIFAR batches (64 images 3x32x32, 100 classes), same threads, in alternating
rounds (the order rotates each round), and records the median step time of each:

- RepDistiller: ``helper.loops.train_distill`` with its models, ``DistillKL(4)``, CE,
  ``opt.distill = 'kd'`` (r = 0.1, a = 0.9), SGD; the loader hands it in-memory batches
  and stamps the time of every fetch, so a step is the time between two fetches
  (forward, KD loss, ``.item()`` logging, accuracy, backward, SGD step);
- kdlab: ``kdlab.engine.train`` on the same batches (an in-memory split), the same
  recipe, timed by the engine's ``Timing`` handler between consecutive iterations
  (loader, seeding, Distiller, backward, SGD step, handlers), with its defaults
  (precision and channels_last ``auto``) and forced to fp32.

img/s = 64 / median step time; ratios are taken within each round (the machine may be
shared: what counts is the interleaved ratio), then their median over rounds.
"""

from __future__ import annotations

import contextlib
import io
import statistics
import sys
import tempfile
import time
from argparse import Namespace
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from kdlab.config import load_recipe
from kdlab.data import DataBundle, TensorSplit
from kdlab.engine import train
from kdlab.engine.handlers import Timing

BATCH = 64
PAIRS = {
    "resnet32x4-resnet8x4": ("resnet32x4", "resnet8x4"),
    "wrn_40_2-wrn_16_2": ("wrn_40_2", "wrn_16_2"),
}
KDLAB_VARIANTS: dict[str, dict[str, Any]] = {
    "kdlab defaults": {},
    "kdlab fp32": {"precision": "fp32"},
    "kdlab fp32, contiguous": {"precision": "fp32", "channels_last": False},
}


def _batches(steps: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(steps * BATCH, 3, 32, 32, generator=g)
    y = torch.randint(0, 100, (steps * BATCH,), generator=g)
    return x, y


def repdistiller_kd(path: str, teacher: str, student: str) -> Callable[[Any, Any], list[float]]:
    """A function running one ``train_distill`` epoch over the given data; it returns
    the seconds of each step."""
    sys.path.insert(0, path)
    try:
        from distiller_zoo import DistillKL  # type: ignore[import-not-found]
        from helper.loops import train_distill  # type: ignore[import-not-found]
        from models import model_dict  # type: ignore[import-not-found]
    finally:
        sys.path.remove(path)
    model_s, model_t = model_dict[student](num_classes=100), model_dict[teacher](num_classes=100)
    module_list = nn.ModuleList([model_s, model_t])  # the teacher last, as train_student.py
    criteria = nn.ModuleList([nn.CrossEntropyLoss(), DistillKL(4), DistillKL(4)])
    optimizer = torch.optim.SGD(model_s.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    opt = Namespace(distill="kd", gamma=0.1, alpha=0.9, beta=0.0, print_freq=10**9)

    def epoch(x: torch.Tensor, y: torch.Tensor) -> list[float]:
        stamps: list[float] = []

        class Loader:
            def __len__(self) -> int:
                return len(y) // BATCH

            def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
                for i in range(len(self)):
                    stamps.append(time.perf_counter())
                    s = slice(i * BATCH, (i + 1) * BATCH)
                    yield x[s], y[s], torch.arange(s.start, s.stop)

        with contextlib.redirect_stdout(io.StringIO()):
            train_distill(0, Loader(), module_list, criteria, optimizer, opt)
        stamps.append(time.perf_counter())
        return [b - a for a, b in zip(stamps, stamps[1:])]

    return epoch


def kdlab_kd(teacher: str, student: str, **train_opts: Any) -> Callable[[Any, Any], list[float]]:
    recipe = {
        "name": "vs",
        "student": {"name": student},
        "teacher": {"name": teacher},
        "data": {"batch_size": BATCH},
        "distill": {
            "terms": [{"method": "ce", "weight": 0.1}, {"method": "kd", "weight": 0.9, "T": 4}]
        },
        "train": {
            "epochs": 1,
            "device": "cpu",
            "progress": False,
            "optimizer": {"name": "sgd", "lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4},
            "schedule": {"name": "constant"},
            **train_opts,
        },
    }
    cfg = load_recipe(recipe)

    def epoch(x: torch.Tensor, y: torch.Tensor) -> list[float]:
        test = TensorSplit(x[:BATCH], y[:BATCH])
        bundle = DataBundle(TensorSplit(x, y), None, test, 100, 3, (32, 32), "synthetic")
        timing = Timing()
        with tempfile.TemporaryDirectory() as d:
            train(cfg, run_dir=d, bundle=bundle, handlers=[timing])
        return timing.seconds()

    return epoch


def measure(
    rd_path: str, pairs: list[str], steps: int, rounds: int, log: Callable[[str], None]
) -> list[dict[str, Any]]:
    """Per pair and round: median step seconds of RepDistiller and each kdlab variant."""
    x, y = _batches(steps + 1)  # the first step of every epoch is dropped (warm-up)
    rows = []
    for pair in pairs:
        teacher, student = PAIRS[pair]
        runners = {"RepDistiller train_distill": repdistiller_kd(rd_path, teacher, student)}
        runners.update({k: kdlab_kd(teacher, student, **v) for k, v in KDLAB_VARIANTS.items()})
        names = list(runners)
        for r in range(rounds):
            order = names[r % len(names) :] + names[: r % len(names)]
            row: dict[str, Any] = {"pair": pair, "round": r + 1, "order": order}
            for name in order:
                row[name] = statistics.median(runners[name](x, y)[1:])
                log(f"{pair} round {r + 1}: {name} {BATCH / row[name]:.1f} img/s")
            rows.append(row)
    return rows


def summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Median img/s over rounds per pair and runner, and the median per-round ratio."""
    out = []
    ref = "RepDistiller train_distill"
    for pair in dict.fromkeys(r["pair"] for r in rows):
        mine = [r for r in rows if r["pair"] == pair]
        for name in [ref, *KDLAB_VARIANTS]:
            out.append(
                {
                    "pair": pair,
                    "runner": name,
                    "img_s": statistics.median(BATCH / r[name] for r in mine),
                    "ratio": statistics.median(r[ref] / r[name] for r in mine),
                    "ratios": [round(r[ref] / r[name], 2) for r in mine],
                }
            )
    return out


def render(rows: list[dict[str, Any]], machine: dict[str, Any], command: str, commit: str) -> str:
    lines = [
        "## Side by side with RepDistiller",
        "",
        f"Machine: {machine['cpu']}, {machine['cores']} cores, torch {machine['torch']}, "
        f"{machine['threads']} intra-op threads; load average at the start "
        f"{machine['load_avg']} (shared with other jobs). RepDistiller at {commit}, "
        "checked out outside this repository.",
        "",
        f"Command: `{command}`",
        "",
        "Synthetic CIFAR batches of 64 in memory, KD (0.1 CE + 0.9 KL at T = 4), SGD; one "
        "process, alternating rounds; median step time per round (first step dropped), "
        "ratio = RepDistiller's step time / kdlab's within the round, median over rounds. "
        "'kdlab defaults': train.precision and train.channels_last auto (here bf16 autocast "
        "and channels_last); 'kdlab fp32': precision fp32, channels_last auto; "
        "'contiguous': both off.",
        "",
        "| pair | runner | img/s (median) | x RepDistiller (median) | per round |",
        "| --- | --- | ---: | ---: | --- |",
    ]
    for r in summary(rows):
        lines.append(
            f"| {r['pair']} | {r['runner']} | {r['img_s']:.1f} | {r['ratio']:.2f} | "
            f"{', '.join(f'{v:.2f}' for v in r['ratios'])} |"
        )
    return "\n".join(lines) + "\n"
