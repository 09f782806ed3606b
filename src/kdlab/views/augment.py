"""Training augmentation, batched on the training device (no per-sample Python).

``data.augment`` (``crop_padding``, ``hflip``) runs :func:`augment` on every training
batch; the same ops are views (``random_crop``, ``random_hflip``) for recipes that want
them on one model's input only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from kdlab.errors import ConfigError
from kdlab.views.base import VIEWS, ViewFn


def random_crop(x: Tensor, padding: int, generator: torch.Generator | None = None) -> Tensor:
    """Zero-pad by ``padding`` and crop back to size at a random offset per sample."""
    if padding <= 0:
        return x
    n, _, h, w = x.shape
    xp = F.pad(x, (padding, padding, padding, padding))
    dev = x.device
    oy = torch.randint(0, 2 * padding + 1, (n,), generator=generator).to(dev)
    ox = torch.randint(0, 2 * padding + 1, (n,), generator=generator).to(dev)
    rows = (oy[:, None] + torch.arange(h, device=dev))[:, :, None]  # (N, H, 1)
    cols = (ox[:, None] + torch.arange(w, device=dev))[:, None, :]  # (N, 1, W)
    batch = torch.arange(n, device=dev)[:, None, None]
    return xp[batch, :, rows, cols].permute(0, 3, 1, 2).contiguous()


def random_hflip(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Flip each sample left-right with probability 1/2."""
    flip = torch.rand(x.shape[0], generator=generator).to(x.device) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(3), x)


def augment(
    x: Tensor, crop_padding: int = 0, hflip: bool = False, generator: torch.Generator | None = None
) -> Tensor:
    if x.dim() != 4:
        return x
    if crop_padding:
        x = random_crop(x, crop_padding, generator)
    if hflip:
        x = random_hflip(x, generator)
    return x


@VIEWS.register("random_crop")
def random_crop_view(padding: int = 4) -> ViewFn:
    """Zero-pad by ``padding`` and crop back at a random offset per sample."""
    if not isinstance(padding, int) or padding < 0:
        raise ConfigError(f"random_crop: padding must be an integer >= 0, got {padding!r}")
    return lambda x: random_crop(x, padding)


@VIEWS.register("random_hflip")
def random_hflip_view() -> ViewFn:
    """Flip each sample left-right with probability 1/2."""
    return random_hflip
