"""kdlab's engine on one GPU: each CUDA path checked, KD timed. A script, not a test.

Everything runs through the engine as ``kdlab train`` does: a recipe, ``Trainer`` /
``train()``, the step from ``engine.step.make_step``, ``train.precision`` and
``train.channels_last`` (``auto``: on for conv nets), its handlers and loaders.

Checks (each reports ok or FAILED with the error; every one runs):

- fp16 + GradScaler (``train.precision: fp16``): a few epochs on a fixed synthetic set
  stay finite, the training loss falls, the checkpoint keeps the scaler's scale;
- bf16 (``train.precision: bf16``): the student's logits under the step's autocast are
  bfloat16 and training stays finite;
- channels_last: ``auto`` picks it, the weights are channels_last, and the logits equal
  a contiguous copy's within fp32 tolerance;
- ``torch.compile`` (``train.compile``): the compiled student's logits equal the eager
  model's, and a compiled run trains;
- NCCL with one rank: an all-reduce and a DDP step;
- streaming on CUDA: ``train()`` on a generated JPEG tree, 2 loader workers, pinned memory,
  fp16, mid-epoch checkpoints, evaluation.

Images per second (``train()`` with the ``Timing`` handler: host time between steps, the
first epoch left out as warm-up; the step never waits for the device, so a full queue
paces it at the device's speed):

- resnet32x4 -> resnet8x4 at 32x32, batch 64 and 256; resnet34 -> resnet18 at 224x224,
  batch 256; synthetic tensors held on the GPU; fp32 and bf16; the KD step (0.1 CE +
  0.9 KD, T 4, SGD) beside a plain student run (CE only) and teacher inference alone
  (``inference_mode`` forward under the same autocast, CUDA-synchronised median);
- resnet34 -> resnet18, batch 256, fed by the streaming loader on generated 375x500 JPEGs
  (RandomResizedCrop 224 + flip in worker processes, pinned memory).

cuDNN's autotuner stays as the engine leaves it (off). Writes
``benchmarks/RESULTS-gpu.md`` naming the device; sized to finish in well under 10
minutes on one recent GPU. Without CUDA it exits with status 2, having run nothing;
``--smoke`` runs the same code on the CPU with tiny models and sizes (the test suite
does, so the script keeps up with the engine) and writes only to an explicit ``--out``.

    PYTHONPATH=src python benchmarks/gpu.py [--out benchmarks/RESULTS-gpu.md]
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import platform
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
KD = [{"method": "ce", "weight": 0.1}, {"method": "kd", "weight": 0.9, "T": 4.0}]
CE = [{"method": "ce"}]


@dataclass(frozen=True)
class Plan:
    """What runs: the full measurement on a GPU, or a tiny smoke run on the CPU."""

    device: str
    small: tuple[str, str, int, int]  # teacher, student, image size, classes
    small_batches: tuple[int, ...]
    big: tuple[str, str, int, int]
    big_batch: int
    steps: int  # timed steps per epoch (and teacher forwards)
    photos: int  # generated JPEGs for the streaming run
    photo_size: tuple[int, int]
    copies: int  # hard links of each training JPEG: 9/10 x photos x copies images an epoch
    workers: int
    threads: int | None = None  # torch threads (train.threads); None: torch's default
    compile: bool = True
    nccl: bool = True
    work: str | None = None  # where run folders and generated images go (main sets it)


FULL = Plan(
    "cuda",
    ("resnet32x4", "resnet8x4", 32, 100),
    (64, 256),
    ("resnet34", "resnet18", 224, 1000),
    256,
    steps=10,
    photos=1024,
    photo_size=(375, 500),
    copies=12,  # 11,064 training images: 43 batches an epoch, about 3 for each of 16 workers
    workers=min(16, os.cpu_count() or 1),
)
SMOKE = Plan(
    "cpu",
    ("cnn_tiny", "cnn_tiny", 16, 10),
    (4,),
    ("cnn_tiny", "cnn_tiny", 24, 10),
    4,
    steps=2,
    photos=20,
    photo_size=(28, 32),
    copies=1,
    workers=1,
    threads=1,
    compile=False,  # inductor on the CPU compiles C++ for minutes
    nccl=False,
)


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def recipe(
    plan: Plan,
    pair: tuple[str, str, int, int],
    batch: int,
    precision: str,
    *,
    kd: bool = True,
    data: dict[str, Any] | None = None,
    **train: Any,
) -> Any:
    """A validated recipe: ``pair``'s student (and teacher when ``kd``), untrained."""
    from kdlab.config import load_config  # noqa: PLC0415

    teacher, student, _, _ = pair
    return load_config(
        {
            "name": "gpu",
            "seed": 0,
            "data": data or {"name": "digits", "batch_size": batch},  # bundle= replaces it
            "student": {"name": student},
            "teacher": {"name": teacher} if kd else None,
            "distill": {"terms": KD if kd else CE},
            "train": {
                "epochs": 2,
                "device": plan.device,
                "precision": precision,
                "progress": False,
                "threads": plan.threads,
                "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
                **train,
            },
        }
    )


def synthetic(pair: tuple[str, str, int, int], n: int, seed: int = 0) -> Any:
    """Noisy copies of one random image per class (``n`` training samples, at most 64
    test samples)."""
    from kdlab.data import DataBundle, TensorSplit  # noqa: PLC0415

    _, _, size, classes = pair
    g = torch.Generator().manual_seed(seed)
    prototypes = torch.randn(classes, 3, size, size, generator=g)  # learnable: loss falls

    def split(m: int) -> TensorSplit:
        y = torch.randint(0, classes, (m,), generator=g)
        return TensorSplit(torch.randn(m, 3, size, size, generator=g) + prototypes[y], y)

    return DataBundle(split(n), None, split(min(n, 64)), classes, 3, (size, size), "synthetic")


def trainer_for(plan: Plan, cfg: Any, bundle: Any = None, handlers: Sequence[Any] = ()) -> Any:
    """A Trainer for ``cfg`` in a fresh run folder under ``plan.work``."""
    from kdlab.engine.runner import Trainer  # noqa: PLC0415

    run_dir = tempfile.mkdtemp(prefix="run-", dir=plan.work)
    return Trainer(cfg, run_dir, bundle=bundle, handlers=handlers)


def _rows(trainer: Any) -> list[dict[str, Any]]:
    return trainer.run_dir.read_metrics()


# ---------------------------------------------------------------- checks


def check_fp16(plan: Plan) -> str:
    pair = plan.small
    cfg = recipe(plan, pair, plan.small_batches[0], "fp16", kd=False, epochs=4)
    trainer = trainer_for(plan, cfg, synthetic(pair, 4 * plan.small_batches[0]))
    trainer.run()
    losses = [r["train_loss"] for r in _rows(trainer)]
    assert all(map(math.isfinite, losses)) and losses[-1] < losses[0], losses
    _, state = trainer.run_dir.latest_checkpoint()
    scale = state["scaler"]["scale"]
    assert scale > 0, state["scaler"]
    return f"{len(losses)} epochs, loss {losses[0]:.3f} -> {losses[-1]:.3f}, scale {scale:.0f}"


def check_bf16(plan: Plan) -> str:
    pair = plan.small
    cfg = recipe(plan, pair, plan.small_batches[0], "bf16")
    bundle = synthetic(pair, 2 * plan.small_batches[0])
    trainer = trainer_for(plan, cfg, bundle)
    x = bundle.train.example(4).to(trainer.device)
    with trainer.precision.autocast():
        logits = trainer.distiller.student(x)
    assert logits.dtype == torch.bfloat16, logits.dtype
    result = trainer.run()
    losses = [r["train_loss"] for r in _rows(trainer)]
    assert all(map(math.isfinite, losses)), losses
    acc = result.test_acc_last
    return f"logits {logits.dtype}, train loss {losses[-1]:.3f}, test acc {acc:.1f}%"


def check_channels_last(plan: Plan) -> str:
    from kdlab.models import create_model  # noqa: PLC0415

    pair = plan.big
    trainer = trainer_for(plan, recipe(plan, pair, 2, "fp32", kd=False), synthetic(pair, 8))
    student = trainer.distiller.student.eval()
    weight = next(p for p in student.parameters() if p.dim() == 4)
    assert trainer.channels_last and weight.is_contiguous(memory_format=torch.channels_last)
    plain = create_model(pair[1], pair[3]).to(trainer.device).eval()
    plain.load_state_dict(student.state_dict())
    x = torch.randn(8, 3, pair[2], pair[2], device=trainer.device)
    with torch.no_grad():
        ref = plain(x)
        out = student(x.contiguous(memory_format=torch.channels_last))
    err = float((out - ref).abs().max())
    assert err < 1e-3 * float(ref.abs().max()), err
    return f"chosen by channels_last: auto; logits differ by {err:.1e} at most ({pair[1]})"


def check_compile(plan: Plan) -> str:
    from kdlab.models import create_model  # noqa: PLC0415

    pair = plan.small
    cfg = recipe(plan, pair, plan.small_batches[0], "fp32", kd=False, compile=True)
    trainer = trainer_for(plan, cfg, synthetic(pair, 2 * plan.small_batches[0]))
    student = trainer.distiller.student
    eager = create_model(pair[1], pair[3]).to(trainer.device)
    eager.load_state_dict(student.state_dict())
    x = torch.randn(8, 3, pair[2], pair[2], device=trainer.device)
    t = time.perf_counter()
    with torch.no_grad():
        a, b = eager(x), student(x)
    first = time.perf_counter() - t
    err = float((a - b).abs().max())
    assert err < 1e-3 * float(a.abs().max()), err
    trainer.run()
    loss = _rows(trainer)[-1]["train_loss"]
    assert math.isfinite(loss), loss
    return f"logits differ by {err:.1e} at most, first call {first:.0f} s; trains: loss {loss:.3f}"


def check_nccl(plan: Plan) -> str:
    import torch.distributed as dist  # noqa: PLC0415

    from kdlab.engine.distributed import free_port  # noqa: PLC0415
    from kdlab.models import create_model  # noqa: PLC0415

    dev = torch.device("cuda", 0)
    dist.init_process_group(
        "nccl", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1
    )
    try:
        t = torch.arange(4.0, device=dev)
        dist.all_reduce(t)
        assert t.tolist() == [0.0, 1.0, 2.0, 3.0]
        model = torch.nn.parallel.DistributedDataParallel(
            create_model("resnet8x4", 100).to(dev), device_ids=[0]
        )
        x, y = torch.randn(16, 3, 32, 32, device=dev), torch.randint(0, 100, (16,), device=dev)
        F.cross_entropy(model(x), y).backward()
        return f"all_reduce and a DDP step, NCCL {'.'.join(map(str, torch.cuda.nccl.version()))}"
    finally:
        dist.destroy_process_group()


def check_streaming(plan: Plan) -> str:
    from kdlab.data.imagetree import make_image_tree  # noqa: PLC0415

    tree = make_image_tree(tempfile.mkdtemp(prefix="tree-", dir=plan.work), size=40, per_class=5)
    data = {
        "name": "imagenet",
        "root": str(tree),
        "batch_size": 8,
        "val_fraction": 0.2,
        "options": {"image_size": 32, "resize": 36, "workers": 2, "stream": True},
    }
    precision = "fp16" if plan.device == "cuda" else "fp32"
    cfg = recipe(plan, plan.small, 8, precision, data=data, checkpoint_every=2)
    trainer = trainer_for(plan, cfg)
    pinned = trainer.train_loader.spec.pin
    assert pinned == (plan.device == "cuda"), pinned
    result = trainer.run()
    assert math.isfinite(result.test_last["loss"]), result.test_last
    return (
        f"{len(trainer.data.train)} JPEGs, 2 workers, pin_memory {pinned}, {precision}: "
        f"test acc {result.test_acc_last:.1f}% after 2 epochs"
    )


CHECKS: dict[str, Callable[[Plan], str]] = {
    "fp16 + GradScaler": check_fp16,
    "bf16 autocast": check_bf16,
    "channels_last": check_channels_last,
    "torch.compile": check_compile,
    "NCCL, one rank": check_nccl,
    "streaming train()": check_streaming,
}


def run_checks(plan: Plan) -> tuple[list[str], int]:
    lines, failed = [], 0
    skip = {"torch.compile": not plan.compile, "NCCL, one rank": not plan.nccl}
    skip["fp16 + GradScaler"] = plan.device != "cuda"  # the engine refuses fp16 on a CPU
    for name, check in CHECKS.items():
        if skip.get(name):
            lines.append(f"| {name} | skipped on {plan.device} |")
            continue
        try:
            lines.append(f"| {name} | ok: {check(plan)} |")
        except Exception as err:  # report every path, not just the first failure
            failed += 1
            traceback.print_exc()
            lines.append(f"| {name} | FAILED: {type(err).__name__}: {err} |")
        print(lines[-1], flush=True)
    return lines, failed


# ---------------------------------------------------------------- timings


def train_rate(plan: Plan, cfg: Any, bundle: Any = None) -> tuple[float, Any]:
    """Images/s of ``train(cfg)`` over its epochs after the first, and the trainer."""
    from kdlab.engine.handlers import Timing  # noqa: PLC0415

    timing = Timing()
    trainer = trainer_for(plan, cfg, bundle, [timing])
    trainer.run()
    per_epoch = len(trainer.train_loader)
    seconds = [s for _, it, s in timing.records if it > per_epoch]
    batch = cfg.data.batch_size
    return batch * len(seconds) / sum(seconds), trainer


def teacher_rate(trainer: Any, batch: int, steps: int) -> float:
    """Images/s of the teacher alone: inference_mode forward under the run's autocast."""
    teacher, dev = trainer.distiller.teacher, trainer.device
    x = trainer.data.train.example(batch).to(dev)
    if trainer.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)

    def forward() -> None:
        with torch.inference_mode(), trainer.precision.autocast():
            teacher(x)

    for _ in range(2):
        forward()
    times = []
    for _ in range(steps):
        _sync(dev)
        t = time.perf_counter()
        forward()
        _sync(dev)
        times.append(time.perf_counter() - t)
    return batch / statistics.median(times)


def time_pair(plan: Plan, name: str, pair: tuple[str, str, int, int], batch: int) -> list[str]:
    rows = []
    bundle = synthetic(pair, plan.steps * batch)
    for precision in ("fp32", "bf16"):
        plain, _ = train_rate(plan, recipe(plan, pair, batch, precision, kd=False), bundle)
        kd, trainer = train_rate(plan, recipe(plan, pair, batch, precision), bundle)
        teach = teacher_rate(trainer, batch, plan.steps)
        rates = " | ".join(f"{r:,.0f}" for r in (plain, teach, kd))
        rows.append(f"| {name} | {batch} | {precision} | synthetic, in device memory | {rates} |")
        print(rows[-1], flush=True)
    return rows


def time_streaming(plan: Plan) -> list[str]:
    """KD ResNet34 -> ResNet18 fed by the streaming loader over generated JPEGs."""
    # the loader benchmark's JPEG maker (benchmarks/ is not a package)
    spec = importlib.util.spec_from_file_location("kdlab_bench_loader", HERE / "loader.py")
    assert spec is not None and spec.loader is not None
    bench_loader = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench_loader)
    rows = []
    teacher, student, size, _ = plan.big
    with tempfile.TemporaryDirectory(dir=plan.work) as tmp:
        t = time.perf_counter()
        bench_loader.make_photos(Path(tmp), plan.photos, *plan.photo_size, 100, plan.copies)
        print(f"# {plan.photos} JPEGs made in {time.perf_counter() - t:.0f} s", flush=True)
        data = {
            "name": "imagenet",
            "root": tmp,
            "batch_size": plan.big_batch,
            "val_fraction": 0.0,
            "options": {"image_size": size, "stream": True, "workers": plan.workers},
        }
        for precision in ("fp32", "bf16"):
            cfg = recipe(plan, plan.big, plan.big_batch, precision, data=data, epochs=3)
            rate, trainer = train_rate(plan, cfg)
            h, w = plan.photo_size
            rows.append(
                f"| {teacher} -> {student}, {size}x{size} | {plan.big_batch} | {precision} | "
                f"streaming loader, {trainer.train_loader.workers} workers, "
                f"{len(trainer.data.train)} JPEGs {h}x{w} ({plan.copies} links each) | | | "
                f"{rate:,.0f} |"
            )
            print(rows[-1], flush=True)
    return rows


def measure(plan: Plan) -> tuple[list[str], int]:
    rows = [
        "",
        "## Images per second",
        "",
        "`train()` with the Timing handler: host time between steps over the epochs after "
        f"the first ({plan.steps} steps each on synthetic data); KD = 0.1 CE + 0.9 KD (T 4), "
        "SGD; student = the same run with CE only and no teacher; teacher = inference_mode "
        "forward under the run's autocast (synchronised median). Every run is "
        "channels_last (train.channels_last: auto, on for conv nets); cuDNN's autotuner "
        "is off, as the engine leaves it.",
        "",
        "| pair | batch | precision | input | student run | teacher inference | KD run |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    parts: list[tuple[Callable[..., list[str]], tuple[Any, ...]]] = [
        (time_pair, (plan, _name(plan.small), plan.small, batch)) for batch in plan.small_batches
    ]
    parts += [(time_pair, (plan, _name(plan.big), plan.big, plan.big_batch))]
    parts += [(time_streaming, (plan,))]
    failed = 0
    for fn, args in parts:
        try:
            rows += fn(*args)
        except Exception as err:  # one failed measurement must not lose the others
            failed += 1
            traceback.print_exc()
            rows.append(f"| FAILED: {fn.__name__}{args[1:3]}: {type(err).__name__}: {err} |")
    return rows, failed


def _name(pair: tuple[str, str, int, int]) -> str:
    teacher, student, size, _ = pair
    return f"{teacher} -> {student}, {size}x{size}"


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    about = "Check kdlab's CUDA paths and time KD on one GPU; writes RESULTS-gpu.md."
    parser = argparse.ArgumentParser(allow_abbrev=False, description=about)
    parser.add_argument("--out", default=None, help="default benchmarks/RESULTS-gpu.md")
    parser.add_argument("--workers", type=int, default=None, help="loader workers")
    parser.add_argument(
        "--smoke", action="store_true", help="the same code on the CPU, tiny sizes"
    )
    args = parser.parse_args(argv)
    plan = SMOKE if args.smoke else FULL
    if not args.smoke and not torch.cuda.is_available():
        print(
            "gpu.py: no CUDA device here (torch.cuda.is_available() is False); nothing run",
            file=sys.stderr,
        )
        return 2
    if args.workers is not None:
        plan = replace(plan, workers=args.workers)
    out = args.out or (None if args.smoke else str(ROOT / "benchmarks" / "RESULTS-gpu.md"))
    began = time.perf_counter()
    if plan.device == "cuda":
        props = torch.cuda.get_device_properties(0)
        device = (
            f"{props.name} ({props.total_memory / 2**30:.0f} GiB, compute capability "
            f"{props.major}.{props.minor}), CUDA {torch.version.cuda}"
        )
    else:
        device = "CPU (smoke run: tiny models and sizes, numbers meaningless)"
    head = [
        "# kdlab on a GPU",
        "",
        f"Device: {device}, torch {torch.__version__}, {os.cpu_count()} CPUs "
        f"({platform.processor() or platform.machine()}).",
        f"Command: `PYTHONPATH=src python benchmarks/gpu.py{' --smoke' if args.smoke else ''}`"
        f" ({time.strftime('%Y-%m-%d')}).",
        "",
        "## CUDA paths, through the engine",
        "",
        "| path | result |",
        "| --- | --- |",
    ]
    with tempfile.TemporaryDirectory(prefix="kdlab-gpu-") as work:
        plan = replace(plan, work=work)
        lines, failed = run_checks(plan)
        rows, failed_too = measure(plan)
    rows += ["", f"Total time of the script: {time.perf_counter() - began:.0f} s."]
    if out is not None:
        Path(out).write_text("\n".join(head + lines + rows) + "\n")
        print(f"wrote {out}")
    return 1 if failed or failed_too else 0


if __name__ == "__main__":
    sys.exit(main())
