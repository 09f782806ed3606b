"""Score a model on a split with an evaluator (default: top-1/top-5 accuracy and loss)."""

from __future__ import annotations

import torch
from torch import nn

from kdlab.data import make_loader
from kdlab.engine import distributed as dist
from kdlab.engine.evaluators import Evaluator
from kdlab.engine.evaluators.accuracy import Accuracy


def evaluate(
    model: nn.Module,
    split: object,
    batch_size: int = 512,
    device: torch.device | str = "cpu",
    evaluator: Evaluator | None = None,
) -> dict[str, float]:
    """``evaluator``'s metrics of ``model`` on ``split`` (by default ``{"acc1", "acc5",
    "loss"}`` in percent / nats). Under DDP every rank must call it: each scores its
    shard and the result is reduced over ranks."""
    loader = make_loader(
        split,  # type: ignore[arg-type]
        batch_size,
        train=False,
        rank=dist.rank(),
        world_size=dist.world_size(),
        device=device,
    )
    return (evaluator or Accuracy()).evaluate(model, loader)
