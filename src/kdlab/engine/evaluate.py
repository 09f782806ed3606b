"""Top-1 / top-5 accuracy and loss of a model on a split."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kdlab.data.base import TensorSplit
from kdlab.taps import model_logits


@torch.no_grad()
def evaluate(
    model: nn.Module, split: TensorSplit, batch_size: int = 512, device: torch.device | str = "cpu"
) -> dict[str, float]:
    """``{"acc1", "acc5", "loss"}`` in percent / nats; the model's mode is restored."""
    was_training = model.training
    model.eval()
    correct1 = correct5 = 0
    loss = 0.0
    n = len(split)
    try:
        for start in range(0, n, batch_size):
            x = split.x[start : start + batch_size].to(device)
            y = split.y[start : start + batch_size].to(device)
            logits = model_logits(model(x)).float()
            loss += float(F.cross_entropy(logits, y, reduction="sum"))
            k = min(5, logits.shape[1])
            top = logits.topk(k, dim=1).indices
            hit = top == y[:, None]
            correct1 += int(hit[:, 0].sum())
            correct5 += int(hit.any(dim=1).sum())
    finally:
        model.train(was_training)
    return {"acc1": 100.0 * correct1 / n, "acc5": 100.0 * correct5 / n, "loss": loss / n}
