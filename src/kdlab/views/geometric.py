"""Deterministic geometric transforms: flips, whole-pixel shifts, zooms.

Data distillation (:mod:`kdlab.pipelines.data_distillation`) ensembles a model's
predictions over such transforms of unlabelled inputs; as views they also serve any
term. Classes are invariant to them, so predictions need no inversion.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from kdlab.errors import ConfigError
from kdlab.views.base import VIEWS, ViewFn


def shift(x: Tensor, dx: int = 0, dy: int = 0) -> Tensor:
    """Translate by whole pixels (right/down positive); the border is replicated in."""
    if dx == 0 and dy == 0:
        return x
    h, w = x.shape[-2:]
    if abs(dx) >= w or abs(dy) >= h:
        raise ConfigError(f"shift ({dx}, {dy}) is as large as the {h}x{w} image")
    xp = F.pad(x, (max(dx, 0), max(-dx, 0), max(dy, 0), max(-dy, 0)), mode="replicate")
    r0, c0 = max(0, -dy), max(0, -dx)
    return xp[..., r0 : r0 + h, c0 : c0 + w]


def scale(x: Tensor, factor: float) -> Tensor:
    """Zoom about the centre by ``factor`` (> 1 enlarges), keeping the image size;
    bilinear sampling, border values outside."""
    if factor <= 0:
        raise ConfigError(f"scale factor must be > 0, got {factor}")
    if factor == 1:
        return x
    n = x.shape[0]
    theta = torch.zeros(n, 2, 3, dtype=x.dtype, device=x.device)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0 / factor
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


@VIEWS.register("hflip")
def hflip_view() -> ViewFn:
    """Left-right flip of every sample."""
    return lambda x: x.flip(-1)


@VIEWS.register("vflip")
def vflip_view() -> ViewFn:
    """Top-bottom flip of every sample."""
    return lambda x: x.flip(-2)


@VIEWS.register("shift")
def shift_view(dx: int = 0, dy: int = 0) -> ViewFn:
    """Translate by ``(dx, dy)`` whole pixels, replicating the border."""
    return lambda x: shift(x, int(dx), int(dy))


@VIEWS.register("scale")
def scale_view(factor: float = 1.0) -> ViewFn:
    """Zoom about the centre by ``factor``."""
    if not factor > 0:
        raise ConfigError(f"scale factor must be > 0, got {factor}")
    return lambda x: scale(x, float(factor))
