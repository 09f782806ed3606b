"""Gaussian input noise: noisy-label matching (``kd`` on a noisy view) and its kin."""

from __future__ import annotations

import torch

from kdlab.errors import ConfigError
from kdlab.views.base import VIEWS, ViewFn


@VIEWS.register("gaussian_noise")
def gaussian_noise(sigma: float = 0.1) -> ViewFn:
    """``x + sigma * z`` with ``z ~ N(0, I)`` drawn fresh each step."""
    if not isinstance(sigma, (int, float)) or not 0 <= sigma < float("inf"):  # NaN fails too
        raise ConfigError(f"gaussian_noise: sigma must be a finite number >= 0, got {sigma!r}")
    return lambda x: x + sigma * torch.randn_like(x)
