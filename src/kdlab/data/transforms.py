"""Per-sample image transforms of the ImageNet protocol, on Pillow images and on tensors.

Training: ``RandomResizedCrop(size, scale=(0.08, 1), ratio=(3/4, 4/3))``, a horizontal
flip with probability 1/2, then ``[0, 1]`` floats normalised per channel. Evaluation:
resize the shorter side to ``resize`` (256 for 224 crops), centre crop ``size``, normalise.
Interpolation is bilinear (antialiased, as Pillow and torchvision's tensor path do).

Randomness comes from a ``torch.Generator`` seeded per sample (from ``(seed, epoch,
index)``, see :func:`sample_seed`), never from global state: a sample's augmentation is
the same whichever worker decodes it and whenever, which is what makes mid-epoch resume
with worker processes exact. The draws are torchvision's, call for call
(``RandomResizedCrop.get_params`` then ``RandomHorizontalFlip``), so with
``backend: torchvision`` (torchvision's own transforms, run under a forked global RNG
seeded with the same number) the output is identical; ``tests/test_transforms.py`` checks
that when torchvision is installed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from kdlab.errors import DataError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed for one sample's augmentation, a pure function of its arguments."""
    h = _splitmix64(seed & _MASK64)
    h = _splitmix64(h ^ (epoch & _MASK64))
    return _splitmix64(h ^ (index & _MASK64)) >> 1


def resized_crop_params(
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    generator: torch.Generator | None = None,
) -> tuple[int, int, int, int]:
    """``(top, left, h, w)`` of a random crop: torchvision's RandomResizedCrop draws.

    Up to 10 tries of an area fraction in ``scale`` and a log-uniform aspect ratio in
    ``ratio``; then the largest centred crop within ``ratio``.
    """
    area = height * width
    log_ratio = torch.log(torch.tensor(ratio))
    for _ in range(10):
        target_area = area * torch.empty(1).uniform_(scale[0], scale[1], generator=generator).item()
        aspect = torch.exp(
            torch.empty(1).uniform_(float(log_ratio[0]), float(log_ratio[1]), generator=generator)
        ).item()
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, size=(1,), generator=generator).item())
            left = int(torch.randint(0, width - w + 1, size=(1,), generator=generator).item())
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def shorter_side_size(height: int, width: int, short: int) -> tuple[int, int]:
    """``(h, w)`` with the shorter side ``short`` (the longer one truncated, as torchvision)."""
    if width <= height:
        return int(short * height / width), short
    return short, int(short * width / height)


def center_crop_box(height: int, width: int, crop_h: int, crop_w: int) -> tuple[int, int]:
    """``(top, left)`` of a centred crop (torchvision rounds half offsets)."""
    if crop_h > height or crop_w > width:
        raise DataError(
            f"centre crop {crop_h}x{crop_w} is larger than the resized image {height}x{width}; "
            "data.options.resize must be at least image_size"
        )
    return int(round((height - crop_h) / 2.0)), int(round((width - crop_w) / 2.0))


# ---------------------------------------------------------------- tensor ops


def _resize_tensor(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear, antialiased; uint8 stays uint8 (rounded), as torchvision does."""
    if tuple(x.shape[-2:]) == size:
        return x
    dtype = x.dtype
    out = F.interpolate(
        x[None].float(), size=size, mode="bilinear", align_corners=False, antialias=True
    )[0]
    if dtype == torch.uint8:
        return out.round_().clamp_(0, 255).to(torch.uint8)
    return out.to(dtype)


def _to_float(x: Tensor) -> Tensor:
    return x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()


def pil_to_array(img: Any) -> np.ndarray:
    """A Pillow image as float32 ``(C, H, W)`` in ``[0, 1]`` (torchvision's ``to_tensor``).

    In numpy, not torch: per-sample work stays single-threaded (torch's intra-op threads
    on 150k-element tensors cost more than they save, badly so on a loaded machine).
    """
    arr = np.asarray(img, dtype=np.uint8)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    out = np.ascontiguousarray(arr.transpose(2, 0, 1), dtype=np.float32)
    out /= np.float32(255.0)
    return out


def pil_to_tensor(img: Any) -> Tensor:
    """:func:`pil_to_array` as a tensor."""
    return torch.from_numpy(pil_to_array(img))


@dataclass(frozen=True)
class ImageTransform:
    """One sample's transform: training (random resized crop + flip) or evaluation
    (resize shorter side + centre crop), then normalisation. Picklable, so worker
    processes receive it with the dataset.

    ``size``: output ``(H, W)``; ``resize``: the shorter side before the centre crop
    (evaluation only); ``mean``/``std``: per-channel, or None for plain ``[0, 1]``;
    ``backend``: ``kdlab`` (this file) or ``torchvision`` (its transforms, same draws).
    """

    size: tuple[int, int]
    resize: int
    random_crop: bool = False
    hflip: bool = False
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)
    mean: tuple[float, ...] | None = IMAGENET_MEAN
    std: tuple[float, ...] | None = IMAGENET_STD
    backend: str = "kdlab"

    @property
    def is_random(self) -> bool:
        return self.random_crop or self.hflip

    def __call__(self, img: Any, seed: int | None = None) -> Tensor:
        """The transformed image, float ``(C, H, W)``; ``seed`` drives the random parts."""
        if self.backend == "torchvision":
            return self._torchvision(img, seed)
        g = None
        if self.is_random:
            if seed is None:
                raise ValueError("a random transform needs a per-sample seed")
            g = torch.Generator().manual_seed(seed)
        if isinstance(img, Tensor):
            return self._normalize(self._tensor(img, g))
        return torch.from_numpy(self._normalize(self._pil(img, g)))

    # One implementation per input type; the draws happen in the same order in both.
    def _pil(self, img: Any, g: torch.Generator | None) -> np.ndarray:
        from PIL import Image  # noqa: PLC0415 - Pillow is only needed to decode files

        width, height = img.size
        out_h, out_w = self.size
        if self.random_crop:
            top, left, h, w = resized_crop_params(height, width, self.scale, self.ratio, g)
            img = img.crop((left, top, left + w, top + h))
            if img.size != (out_w, out_h):
                img = img.resize((out_w, out_h), Image.BILINEAR)
        else:
            new_h, new_w = shorter_side_size(height, width, self.resize)
            if (new_h, new_w) != (height, width):
                img = img.resize((new_w, new_h), Image.BILINEAR)
            top, left = center_crop_box(new_h, new_w, out_h, out_w)
            if (out_h, out_w) != (new_h, new_w):
                img = img.crop((left, top, left + out_w, top + out_h))
        if self.hflip and torch.rand(1, generator=g).item() < 0.5:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        return pil_to_array(img)

    def _tensor(self, x: Tensor, g: torch.Generator | None) -> Tensor:
        if x.dim() != 3:
            raise DataError(f"an image tensor must be (C, H, W), got shape {tuple(x.shape)}")
        height, width = x.shape[-2:]
        if self.random_crop:
            top, left, h, w = resized_crop_params(height, width, self.scale, self.ratio, g)
            x = _resize_tensor(x[:, top : top + h, left : left + w], self.size)
        else:
            new_h, new_w = shorter_side_size(height, width, self.resize)
            x = _resize_tensor(x, (new_h, new_w))
            top, left = center_crop_box(new_h, new_w, *self.size)
            x = x[:, top : top + self.size[0], left : left + self.size[1]]
        if self.hflip and torch.rand(1, generator=g).item() < 0.5:
            x = x.flip(-1)
        return _to_float(x).contiguous()

    def _normalize(self, x: Any) -> Any:
        """``(x - mean) / std`` per channel, in place, on a tensor or a numpy array."""
        if self.mean is None or self.std is None:
            return x
        if len(self.mean) != x.shape[0]:
            raise DataError(
                f"normalisation has {len(self.mean)} channel means but the image has "
                f"{x.shape[0]} channels (data.options.mean / std)"
            )
        if isinstance(x, np.ndarray):
            x -= np.asarray(self.mean, dtype=np.float32)[:, None, None]
            x /= np.asarray(self.std, dtype=np.float32)[:, None, None]
            return x
        mean = torch.tensor(self.mean, dtype=x.dtype)[:, None, None]
        std = torch.tensor(self.std, dtype=x.dtype)[:, None, None]
        return x.sub_(mean).div_(std)

    def _torchvision(self, img: Any, seed: int | None) -> Tensor:
        """torchvision's transforms, the global RNG seeded per sample and restored after."""
        tvt = import_torchvision_transforms()
        steps: list[Any] = []
        if self.random_crop:
            steps.append(tvt.RandomResizedCrop(self.size, self.scale, self.ratio, antialias=True))
        else:
            steps += [tvt.Resize(self.resize, antialias=True), tvt.CenterCrop(self.size)]
        if self.hflip:
            steps.append(tvt.RandomHorizontalFlip())
        if isinstance(img, Tensor):
            steps.append(tvt.ConvertImageDtype(torch.float32))
        else:
            steps.append(tvt.ToTensor())
        if self.mean is not None and self.std is not None:
            steps.append(tvt.Normalize(self.mean, self.std))
        with torch.random.fork_rng(devices=[]):
            if seed is not None:
                torch.manual_seed(seed)
            return tvt.Compose(steps)(img)


def import_torchvision_transforms() -> Any:
    """``torchvision.transforms``, or a DataError when it is not importable."""
    try:
        import torchvision.transforms as tvt  # noqa: PLC0415 - optional extra
    except Exception as err:  # ImportError, or a torchvision built for another torch
        raise DataError(
            f"data.options.backend 'torchvision' needs an importable torchvision ({err}); "
            "use backend: kdlab"
        ) from None
    return tvt


def torchvision_available() -> bool:
    try:
        import_torchvision_transforms()
    except DataError:
        return False
    return True


def imagenet_transforms(
    size: tuple[int, int],
    resize: int,
    *,
    augment: bool = True,
    hflip: bool = True,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0),
    mean: tuple[float, ...] | None = IMAGENET_MEAN,
    std: tuple[float, ...] | None = IMAGENET_STD,
    backend: str = "auto",
) -> tuple[ImageTransform, ImageTransform]:
    """``(train, eval)`` transforms of the ImageNet protocol; ``augment=False`` trains on
    the evaluation transform. ``backend``: ``auto`` (torchvision when importable),
    ``kdlab`` or ``torchvision``."""
    if backend not in ("auto", "kdlab", "torchvision"):
        raise DataError(f"data.options.backend must be auto, kdlab or torchvision, got {backend!r}")
    if backend == "auto":
        backend = "torchvision" if torchvision_available() else "kdlab"
    elif backend == "torchvision":
        import_torchvision_transforms()
    common = {"size": size, "resize": resize, "mean": mean, "std": std, "backend": backend}
    evaluation = ImageTransform(**common)
    if not augment:
        return evaluation, evaluation
    train = ImageTransform(random_crop=True, hflip=hflip, scale=scale, ratio=ratio, **common)
    return train, evaluation
