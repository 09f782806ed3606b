"""The training step: one Ignite process function per stage, built from its parts.

:func:`make_step` returns ``step(engine, batch) -> StepOutput`` for a distiller, an
optimiser and a :class:`Precision`. The step never waits for the device: losses,
the correct count and a finiteness flag stay tensors (:class:`StepOutput`); the
handlers (``EpochMetrics``, ``NanGuard``) sum and check them once per interval.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine
from torch import Tensor, nn

from kdlab.distiller import Distiller
from kdlab.engine.stages import Stage
from kdlab.errors import ConfigError
from kdlab.inputs import Inputs, images, map_images

Batch = tuple[Inputs, Tensor, Tensor]


@dataclass
class StepOutput:
    """What one step leaves on the device: named losses (detached, weighted), their
    total, the number of correct top-1 predictions, the batch size, and ``finite``:
    one flag per entry of ``[total, *losses, grad_norm]``."""

    losses: dict[str, Tensor]
    total: Tensor
    correct: Tensor
    n: int
    finite: Tensor


# ---------------------------------------------------------------- precision


def native_bf16(device: torch.device) -> bool:
    """True where bf16 matmuls and convolutions run natively: CUDA capability >= 8.0,
    CPUs with AVX512-BF16 or AMX (elsewhere bf16 is emulated and slower than fp32)."""
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device) >= (8, 0)
    if device.type != "cpu":
        return False
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:  # older torch: read the CPU flags
        try:
            flags = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
        return " avx512_bf16" in flags or " amx_bf16" in flags


class Precision:
    """Autocast dtype and, for fp16, the gradient scaler: how a step runs and steps."""

    def __init__(self, name: str, device: torch.device) -> None:
        if name == "auto":
            name = "bf16" if native_bf16(device) else "fp32"
        if name == "fp16" and device.type != "cuda":
            raise ConfigError(
                "train.precision 'fp16' needs a CUDA device (it trains with a gradient "
                "scaler); use 'bf16' on CPU"
            )
        self.name = name
        self.device = device
        self.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(name)
        self.scaler = torch.amp.GradScaler("cuda") if name == "fp16" else None

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.dtype is None:
            return contextlib.nullcontext()  # a disabled autocast still costs per step
        return torch.autocast(self.device.type, dtype=self.dtype)

    def state_dict(self) -> dict[str, Any]:
        return self.scaler.state_dict() if self.scaler is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)


def wants_channels_last(setting: str | bool, model: nn.Module, example: Inputs) -> bool:
    """``auto``: channels_last for convolutional models on 4-D float input."""
    if setting != "auto":
        return bool(setting)
    return bool(images(example)) and any(isinstance(m, nn.Conv2d) for m in model.modules())


# ---------------------------------------------------------------- seeding


def seed_for(seed: int, stage_index: int, iteration: int, rank: int = 0) -> int:
    """The seed of one step: a function of the run seed and the step alone.

    Every step's randomness (augmentation, views, dropout) is then replayed exactly by
    a resumed run. Each rank of a distributed run draws its own (its shard must not
    get the same crops as rank 0's).
    """
    return (seed * 1_000_003 + stage_index * 10_000_019 + iteration + rank * 1_000_000_007) % (
        2**63 - 1
    )


def seed_step(seed: int, device: torch.device) -> None:
    """Seed the generators a step can draw from: the CPU one and the training device's.

    Same streams as ``torch.manual_seed``, which also seeds every lazily-initialised
    backend (cuda, xpu, mtia...) through Python and costs a few ms.
    """
    torch.default_generator.manual_seed(seed)
    if device.type == "cuda":
        torch.cuda.manual_seed(seed)


# ---------------------------------------------------------------- the step


def make_step(
    model: nn.Module,
    distiller: Distiller,
    optimizer: torch.optim.Optimizer,
    params: list[nn.Parameter],
    stage: Stage,
    *,
    stage_index: int,
    seed: int,
    rank: int,
    precision: Precision,
    channels_last: bool,
    grad_clip: float | None,
    augment: Callable[[Tensor], Tensor] | None = None,
) -> Callable[[Engine, Batch], StepOutput]:
    """The process function of one stage.

    ``model`` is the distiller, or its DDP wrapper; ``params`` the trainable
    parameters (clipped when ``grad_clip`` is set). ``augment`` runs on the batch's
    float image tensors after the step's seeding, as does ``channels_last``; other
    inputs (token ids, masks) pass unchanged.
    """
    device = precision.device
    scaler = precision.scaler
    losses = stage.losses
    clip = grad_clip is not None and scaler is None  # fp16's scaler skips bad steps itself

    def step(engine: Engine, batch: Batch) -> StepOutput:
        x, y, idx = batch
        it = engine.state.iteration
        seed_step(seed_for(seed, stage_index, it, rank), device)
        if not (distiller.training and distiller.student.training):  # walking all modules
            distiller.train()  # every step costs more than a small forward
        if augment is not None:
            x = map_images(x, augment)
        if channels_last:
            x = map_images(x, _channels_last)
        with precision.autocast():
            out = model(
                x,
                y,
                idx,
                losses=losses,
                epoch=engine.state.epoch - 1,
                iteration=it,
                # the stage's share done: schedules that scale with training (DKD's warm-up)
                progress=_progress(engine.state, it),
            )
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(out.total).backward()
            scaler.unscale_(optimizer)
        else:
            out.total.backward()
        checked = [out.total.detach(), *(v.detach() for v in out.losses.values())]
        if grad_clip is not None:
            norm = torch.nn.utils.clip_grad_norm_(params, grad_clip)
            if clip:  # a NaN norm gives NaN gradients: flagged, and caught before a checkpoint
                checked.append(norm.detach())
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        finite = torch.isfinite(torch.stack([c.float().reshape(()) for c in checked]))
        correct = (out.logits.detach().argmax(1) == y).sum()
        detached = {k: v.detach() for k, v in out.losses.items()}
        return StepOutput(detached, out.total.detach(), correct, int(y.shape[0]), finite)

    return step


def _channels_last(x: Tensor) -> Tensor:
    return x.contiguous(memory_format=torch.channels_last)


def _progress(state: Any, iteration: int) -> float | None:
    """The stage's share done before this step, or None when the engine does not know its
    length (an engine run by hand): terms then fall back to their epoch-based schedules."""
    if not state.max_epochs or not state.epoch_length:
        return None
    return (iteration - 1) / (state.max_epochs * state.epoch_length)
