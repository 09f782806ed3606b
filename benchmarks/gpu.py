"""The CUDA paths, checked and timed on one GPU. A script, not a test; needs CUDA.

Checks that each path works: fp16 autocast with a GradScaler (steps finite, scale kept),
bf16 autocast (outputs in bfloat16, steps finite), channels_last (same logits as
contiguous within fp32 tolerance), ``torch.compile`` (a compiled step gives the eager
step's loss), NCCL with one rank (all-reduce and a DDP step).

Then measures images/s (median of timed steps after a warm-up, CUDA-synchronised) of

- KD resnet32x4 -> resnet8x4 at 32x32, batch 64 and 256;
- KD ResNet34 -> ResNet18 at 224x224, batch 256, on synthetic tensors already on the GPU
  and fed by the streaming loader (the ``imagenet`` dataset on generated JPEGs,
  RandomResizedCrop + flip in worker processes, pinned memory);

each next to a plain student step (forward, cross-entropy, backward, SGD) and teacher
inference alone, in fp32 and in bf16 autocast with channels_last. The KD step is kdlab's
``Distiller`` (CE + KD at T = 4) with SGD. Writes ``benchmarks/RESULTS-gpu.md`` naming the
device. Sized to finish in under 10 minutes on one recent GPU.

    PYTHONPATH=src python benchmarks/gpu.py [--out benchmarks/RESULTS-gpu.md] [--quick]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]


def _timed(step: Callable[[], object], warmup: int, steps: int) -> float:
    """Median seconds of ``step`` (CUDA-synchronised)."""
    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        step()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


# ---------------------------------------------------------------- checks


def check_fp16_scaler(dev: torch.device) -> str:
    from kdlab.models import create_model  # noqa: PLC0415

    model = create_model("resnet8x4", 100).to(dev)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    scaler = torch.amp.GradScaler("cuda")
    x, y = torch.randn(64, 3, 32, 32, device=dev), torch.randint(0, 100, (64,), device=dev)
    losses = []
    for _ in range(20):
        with torch.autocast("cuda", dtype=torch.float16):
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        losses.append(float(loss))
    assert all(map(torch.isfinite, map(torch.tensor, losses))), losses
    assert losses[-1] < losses[0], f"loss did not fall on a fixed batch: {losses}"
    return f"20 steps, loss {losses[0]:.3f} -> {losses[-1]:.3f}, scale {scaler.get_scale():.0f}"


def check_bf16(dev: torch.device) -> str:
    from kdlab.models import create_model  # noqa: PLC0415

    model = create_model("resnet8x4", 100).to(dev)
    x, y = torch.randn(64, 3, 32, 32, device=dev), torch.randint(0, 100, (64,), device=dev)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = model(x)
        loss = F.cross_entropy(out, y)
    loss.backward()
    assert out.dtype == torch.bfloat16 and torch.isfinite(loss)
    return f"logits {out.dtype}, loss {float(loss):.3f}"


def check_channels_last(dev: torch.device) -> str:
    from kdlab.models import create_model  # noqa: PLC0415

    model = create_model("resnet18", 1000).to(dev).eval()
    x = torch.randn(8, 3, 224, 224, device=dev)
    with torch.no_grad():
        ref = model(x)
        model = model.to(memory_format=torch.channels_last)
        out = model(x.contiguous(memory_format=torch.channels_last))
    err = float((out - ref).abs().max())
    assert err < 1e-3 * float(ref.abs().max()), err
    return f"max |difference| {err:.2e} (resnet18 logits)"


def check_compile(dev: torch.device) -> str:
    from kdlab.models import create_model  # noqa: PLC0415

    torch.manual_seed(0)
    eager = create_model("resnet8x4", 100).to(dev)
    compiled = create_model("resnet8x4", 100).to(dev)
    compiled.load_state_dict(eager.state_dict())
    compiled.compile()
    x, y = torch.randn(64, 3, 32, 32, device=dev), torch.randint(0, 100, (64,), device=dev)
    t = time.perf_counter()
    a = F.cross_entropy(eager(x), y)
    b = F.cross_entropy(compiled(x), y)
    b.backward()
    assert abs(float(a) - float(b)) < 1e-3, (float(a), float(b))
    return f"loss {float(b):.4f} = eager {float(a):.4f}; first call {time.perf_counter() - t:.0f} s"


def check_nccl(dev: torch.device) -> str:
    import torch.distributed as dist  # noqa: PLC0415

    from kdlab.engine.distributed import free_port  # noqa: PLC0415
    from kdlab.models import create_model  # noqa: PLC0415

    dist.init_process_group(
        "nccl", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1
    )
    try:
        t = torch.arange(4.0, device=dev)
        dist.all_reduce(t)
        assert t.tolist() == [0.0, 1.0, 2.0, 3.0]
        model = torch.nn.parallel.DistributedDataParallel(
            create_model("resnet8x4", 100).to(dev), device_ids=[dev.index or 0]
        )
        x, y = torch.randn(16, 3, 32, 32, device=dev), torch.randint(0, 100, (16,), device=dev)
        F.cross_entropy(model(x), y).backward()
        return f"all_reduce and a DDP step, NCCL {'.'.join(map(str, torch.cuda.nccl.version()))}"
    finally:
        dist.destroy_process_group()


CHECKS = {
    "fp16 + GradScaler": check_fp16_scaler,
    "bf16 autocast": check_bf16,
    "channels_last": check_channels_last,
    "torch.compile": check_compile,
    "NCCL, one rank": check_nccl,
}


# ---------------------------------------------------------------- timings


class Pair:
    """Teacher, student and the three steps timed on them."""

    def __init__(self, teacher: str, student: str, classes: int, dev: torch.device, fast: bool):
        from kdlab.distiller import Distiller  # noqa: PLC0415
        from kdlab.methods import build_terms  # noqa: PLC0415
        from kdlab.models import create_model  # noqa: PLC0415

        self.dev, self.fast, self.classes = dev, fast, classes
        fmt = torch.channels_last if fast else torch.contiguous_format
        self.teacher = create_model(teacher, classes).to(dev, memory_format=fmt).eval()
        self.student = create_model(student, classes).to(dev, memory_format=fmt)
        self.plain_opt = torch.optim.SGD(self.student.parameters(), lr=0.1, momentum=0.9)
        terms = build_terms([{"method": "ce", "weight": 0.1}, {"method": "kd", "weight": 0.9}])
        self.distiller = Distiller(self.student, self.teacher, terms).to(dev)
        self.kd_opt = torch.optim.SGD(self.distiller.parameters(), lr=0.1, momentum=0.9)

    def _autocast(self) -> torch.autocast:
        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.fast)

    def _input(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.fast else x

    def student_step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        with self._autocast():
            loss = F.cross_entropy(self.student(self._input(x)), y)
        self.plain_opt.zero_grad(set_to_none=True)
        loss.backward()
        self.plain_opt.step()

    def teacher_step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        with torch.inference_mode(), self._autocast():
            self.teacher(self._input(x))

    def kd_step(self, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor | None = None) -> None:
        with self._autocast():
            out = self.distiller(self._input(x), y)
        self.kd_opt.zero_grad(set_to_none=True)
        out.total.backward()
        self.kd_opt.step()


def time_pair(
    rows: list[str],
    name: str,
    pair: tuple[str, str, int, int],
    batch: int,
    dev: torch.device,
    steps: int,
) -> None:
    teacher, student, size, classes = pair
    for fast in (False, True):
        p = Pair(teacher, student, classes, dev, fast)
        x = torch.randn(batch, 3, size, size, device=dev)
        y = torch.randint(0, classes, (batch,), device=dev)
        rates = [
            batch / _timed(lambda f=f, x=x, y=y: f(x, y), 3, steps)
            for f in (p.student_step, p.teacher_step, p.kd_step)
        ]
        mode = "bf16 + channels_last" if fast else "fp32"
        rows.append(
            f"| {name} | {batch} | {mode} | synthetic tensors on the GPU | "
            + " | ".join(f"{r:,.0f}" for r in rates)
            + " |"
        )
        print(rows[-1], flush=True)


def time_streaming(
    rows: list[str], dev: torch.device, batch: int, images: int, workers: int
) -> None:
    """KD ResNet34 -> ResNet18 fed by the streaming loader over generated JPEGs."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from loader import make_photos  # noqa: PLC0415 - the loader benchmark's JPEG maker

    from kdlab.config import DataConfig  # noqa: PLC0415
    from kdlab.data import build_dataset, make_loader  # noqa: PLC0415

    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        make_photos(Path(tmp), images, 375, 500, classes=100)
        print(f"# {images} JPEGs made in {time.perf_counter() - t:.0f} s", flush=True)
        cfg = DataConfig(
            name="imagenet",
            root=tmp,
            val_fraction=0.0,
            options={"stream": True, "workers": workers, "backend": "kdlab"},
        )
        split = build_dataset(cfg).train
        loader = make_loader(split, batch, train=True, seed=0, device=dev)
        for fast in (False, True):
            p = Pair("resnet34", "resnet18", 100, dev, fast)
            seen, start = 0, 0.0
            for epoch in range(3):  # epoch 0 warms up (workers, page cache, cudnn)
                loader.set_epoch(epoch)
                if epoch == 1:
                    torch.cuda.synchronize()
                    start = time.perf_counter()
                for x, y, _ in loader:
                    p.kd_step(x, y)
                    seen += len(x) if epoch else 0
            torch.cuda.synchronize()
            rate = seen / (time.perf_counter() - start)
            mode = "bf16 + channels_last" if fast else "fp32"
            rows.append(
                f"| resnet34 -> resnet18, 224x224 | {batch} | {mode} | streaming loader, "
                f"{loader.workers} workers, {images} JPEGs 375x500 | | | {rate:,.0f} |"
            )
            print(rows[-1], flush=True)


def main() -> int:
    about = "Check kdlab's CUDA paths and time KD on one GPU; writes RESULTS-gpu.md."
    parser = argparse.ArgumentParser(allow_abbrev=False, description=about)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "RESULTS-gpu.md"))
    parser.add_argument("--steps", type=int, default=20, help="timed steps per measurement")
    parser.add_argument("--images", type=int, default=4096, help="generated JPEGs to stream")
    parser.add_argument("--workers", type=int, default=None, help="loader workers (auto)")
    parser.add_argument("--quick", action="store_true", help="fewer steps and images")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print(
            "gpu.py: no CUDA device here (torch.cuda.is_available() is False); nothing run",
            file=sys.stderr,
        )
        return 2
    if args.quick:
        args.steps, args.images = 5, 1024
    dev = torch.device("cuda", 0)
    torch.backends.cudnn.benchmark = True
    props = torch.cuda.get_device_properties(dev)
    began = time.perf_counter()
    head = [
        "# kdlab on a GPU",
        "",
        f"Device: {props.name} ({props.total_memory / 2**30:.0f} GiB, compute capability "
        f"{props.major}.{props.minor}), torch {torch.__version__}, CUDA {torch.version.cuda}, "
        f"{os.cpu_count()} CPUs ({platform.processor() or platform.machine()}).",
        f"Command: `PYTHONPATH=src python benchmarks/gpu.py{' --quick' if args.quick else ''}`"
        f" ({time.strftime('%Y-%m-%d')}).",
        "",
        "## CUDA paths",
        "",
        "| path | result |",
        "| --- | --- |",
    ]
    failed = 0
    for name, check in CHECKS.items():
        try:
            head.append(f"| {name} | ok: {check(dev)} |")
        except Exception as err:  # report every path, not just the first failure
            failed += 1
            traceback.print_exc()
            head.append(f"| {name} | FAILED: {type(err).__name__}: {err} |")
        print(head[-1], flush=True)
    rows = [
        "",
        "## Images per second",
        "",
        f"Median of {args.steps} steps after 3 warm-up steps; KD = kdlab's Distiller, "
        "0.1 CE + 0.9 KD (T 4), SGD; student step = forward, CE, backward, SGD; teacher = "
        "inference_mode forward.",
        "",
        "| pair | batch | precision | input | student step | teacher inference | KD step |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for batch in (64, 256):
        time_pair(
            rows,
            "resnet32x4 -> resnet8x4, 32x32",
            ("resnet32x4", "resnet8x4", 32, 100),
            batch,
            dev,
            args.steps,
        )
    time_pair(
        rows,
        "resnet34 -> resnet18, 224x224",
        ("resnet34", "resnet18", 224, 1000),
        256,
        dev,
        args.steps,
    )
    workers = args.workers if args.workers is not None else min(16, os.cpu_count() or 1)
    time_streaming(rows, dev, 256, args.images, workers)
    rows += ["", f"Total time of the script: {time.perf_counter() - began:.0f} s."]
    Path(args.out).write_text("\n".join(head + rows) + "\n")
    print(f"wrote {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
