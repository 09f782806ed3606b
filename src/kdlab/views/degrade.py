"""Signal degradations as batched tensor ops, registered as input views.

Cross quality distillation (Su & Maji, arXiv:1604.00433) trains a student on a
degraded copy of the input the teacher sees clean. Each degradation here is a pure
function on a batch ``(N, C, H, W)`` and a view factory in :data:`kdlab.views.VIEWS`:

- ``downsample``: down-sample to ``size`` (area averaging), up-sample back (bilinear);
  the paper's low-resolution setting. ``size`` equal to the input size is the identity.
- ``gaussian_blur``: separable Gaussian kernel of std ``sigma`` pixels, replicate
  padding (a constant image stays constant).
- ``additive_noise``: ``x + sigma * z``, Gaussian or uniform ``z``; a ``seed`` makes
  the noise a fixed function of the batch position (used to degrade a test set once).
- ``grayscale``: the channel mean, repeated so the channel count is kept.
- ``quantize``: ``levels`` evenly spaced values between each image's min and max
  (or a fixed ``low``/``high`` range).
- ``degrade``: a chain of the above, ``steps: [{type: downsample, size: 4}, ...]``.

Inputs in kdlab are usually standardised, so the ops make no assumption of a
``[0, 1]`` range (quantisation uses each image's own range unless told otherwise).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from kdlab.errors import ConfigError
from kdlab.views.base import VIEWS, ViewFn, build_view


def _check_4d(x: Tensor, what: str) -> None:
    if x.dim() != 4:
        raise ConfigError(f"{what} needs image batches (N, C, H, W), got shape {tuple(x.shape)}")


def _pair(size: int | Sequence[int], what: str) -> tuple[int, int]:
    if isinstance(size, int):
        pair = (size, size)
    elif isinstance(size, Sequence) and len(size) == 2:
        pair = (int(size[0]), int(size[1]))
    else:
        raise ConfigError(f"{what}: size must be an int or [height, width], got {size!r}")
    if min(pair) < 1:
        raise ConfigError(f"{what}: size must be >= 1, got {size!r}")
    return pair


# ---------------------------------------------------------------- pure functions


def downsample(
    x: Tensor, size: int | Sequence[int], down_mode: str = "area", up_mode: str = "bilinear"
) -> Tensor:
    """Down-sample to ``size`` then up-sample back to the input size.

    ``area`` averaging is the anti-aliased reduction; ``bilinear`` up-sampling with
    ``align_corners=False`` returns the input unchanged when no reduction happened.
    """
    _check_4d(x, "downsample")
    h, w = x.shape[-2:]
    target = _pair(size, "downsample")
    if target == (h, w):
        return x
    small = F.interpolate(x, size=target, mode=down_mode)
    kw: dict[str, Any] = {} if up_mode in ("nearest", "area") else {"align_corners": False}
    return F.interpolate(small, size=(h, w), mode=up_mode, **kw)


def gaussian_kernel1d(sigma: float, radius: int | None = None) -> Tensor:
    """A normalised 1-D Gaussian kernel (radius ``ceil(3 sigma)`` by default)."""
    if radius is None:
        radius = max(1, math.ceil(3.0 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return (k / k.sum()).float()


def gaussian_blur(x: Tensor, sigma: float, radius: int | None = None) -> Tensor:
    """Separable Gaussian blur, each channel alone, replicate padding."""
    _check_4d(x, "gaussian_blur")
    if sigma <= 0:
        return x
    k = gaussian_kernel1d(sigma, radius).to(dtype=x.dtype, device=x.device)
    r = (k.numel() - 1) // 2
    c = x.shape[1]
    kx = k.view(1, 1, 1, -1).repeat(c, 1, 1, 1)
    ky = k.view(1, 1, -1, 1).repeat(c, 1, 1, 1)
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="replicate"), kx, groups=c)
    return F.conv2d(F.pad(x, (0, 0, r, r), mode="replicate"), ky, groups=c)


def additive_noise(
    x: Tensor, sigma: float, kind: str = "gaussian", generator: torch.Generator | None = None
) -> Tensor:
    """``x + sigma * z``; ``z`` standard normal, or uniform on ``[-sqrt(3), sqrt(3)]``
    (unit variance) when ``kind='uniform'``."""
    if sigma == 0:
        return x
    if kind == "gaussian":
        z = torch.randn(x.shape, generator=generator, dtype=x.dtype)
    elif kind == "uniform":
        z = (torch.rand(x.shape, generator=generator, dtype=x.dtype) * 2 - 1) * math.sqrt(3.0)
    else:
        raise ConfigError(f"additive_noise: kind must be 'gaussian' or 'uniform', got {kind!r}")
    return x + sigma * z.to(x.device)


def grayscale(x: Tensor) -> Tensor:
    """The channel mean, repeated over the channels (shape unchanged)."""
    _check_4d(x, "grayscale")
    return x.mean(dim=1, keepdim=True).expand_as(x).contiguous()


def quantize(x: Tensor, levels: int, low: float | None = None, high: float | None = None) -> Tensor:
    """Round to ``levels`` evenly spaced values spanning ``[low, high]``.

    Without ``low``/``high`` each image uses its own min and max, so a batch of
    standardised images keeps its contrast. Values outside a fixed range are clipped.
    """
    if levels < 2:
        raise ConfigError(f"quantize: levels must be >= 2, got {levels}")
    dims = tuple(range(1, x.dim()))
    lo = x.amin(dim=dims, keepdim=True) if low is None else torch.full_like(x[:1], low)
    hi = x.amax(dim=dims, keepdim=True) if high is None else torch.full_like(x[:1], high)
    span = (hi - lo).clamp_min(1e-12)
    steps = levels - 1
    q = torch.round(((x - lo) / span).clamp(0, 1) * steps) / steps
    return lo + q * span


# ---------------------------------------------------------------- view factories


@VIEWS.register("downsample")
def downsample_view(
    size: int | list[int] = 4, down_mode: str = "area", up_mode: str = "bilinear"
) -> ViewFn:
    """Low resolution: down-sample to ``size``, up-sample back."""
    _pair(size, "downsample")
    return lambda x: downsample(x, size, down_mode, up_mode)


@VIEWS.register("gaussian_blur")
def gaussian_blur_view(sigma: float = 1.0, radius: int | None = None) -> ViewFn:
    """Gaussian blur of std ``sigma`` pixels."""
    if sigma < 0:
        raise ConfigError(f"gaussian_blur: sigma must be >= 0, got {sigma}")
    return lambda x: gaussian_blur(x, sigma, radius)


@VIEWS.register("additive_noise")
def additive_noise_view(
    sigma: float = 0.5, kind: str = "gaussian", seed: int | None = None
) -> ViewFn:
    """Additive noise; fresh each call, or a fixed draw per call when ``seed`` is set."""
    if sigma < 0:
        raise ConfigError(f"additive_noise: sigma must be >= 0, got {sigma}")
    if kind not in ("gaussian", "uniform"):
        raise ConfigError(f"additive_noise: kind must be 'gaussian' or 'uniform', got {kind!r}")

    def fn(x: Tensor) -> Tensor:
        g = torch.Generator().manual_seed(seed) if seed is not None else None
        return additive_noise(x, sigma, kind, g)

    return fn


@VIEWS.register("grayscale")
def grayscale_view() -> ViewFn:
    """Grey-scale: channel mean, kept at the input's channel count."""
    return grayscale


@VIEWS.register("quantize")
def quantize_view(levels: int = 4, low: float | None = None, high: float | None = None) -> ViewFn:
    """Quantisation to ``levels`` grey levels per image (or in a fixed range)."""
    if levels < 2:
        raise ConfigError(f"quantize: levels must be >= 2, got {levels}")
    return lambda x: quantize(x, levels, low, high)


@VIEWS.register("degrade")
def degrade_view(steps: Sequence[Mapping[str, Any]] = ()) -> ViewFn:
    """A chain of registered views applied in order: ``steps: [{type: ..., ...}, ...]``."""
    fns = [build_view(spec, f"degrade.steps.{i}") for i, spec in enumerate(steps)]

    def fn(x: Tensor) -> Tensor:
        for f in fns:
            x = f(x)
        return x

    return fn


@torch.no_grad()
def degrade_tensor(x: Tensor, spec: Mapping[str, Any], seed: int = 0, batch: int = 1024) -> Tensor:
    """Degrade a whole split once (e.g. the test set), reproducibly.

    The global RNG is forked under ``seed`` so noise views give the same draw every
    time, whatever ran before.
    """
    fn = build_view(spec)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return torch.cat([fn(x[i : i + batch]) for i in range(0, x.shape[0], batch)])
