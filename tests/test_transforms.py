"""The ImageNet transforms: crop geometry, evaluation pipeline, tensor path, torchvision.

Expected values are computed here by hand (the arithmetic of resize 256 + centre crop 224
on a 300x200 image) and with plain Pillow calls; the torchvision comparison runs only
where torchvision imports (not beside the CPU torch 2.13 wheel: it was run in a separate
venv with torch 2.14.1 + torchvision 0.29.1, see the test's docstring).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from kdlab.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageTransform,
    imagenet_transforms,
    pil_to_tensor,
    resized_crop_params,
    sample_seed,
    torchvision_available,
)


def _image(h: int = 200, w: int = 300, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (h // 10 + 1, w // 10 + 1, 3), dtype=np.uint8)
    # Smooth content (a blown-up random grid) plus fine noise: crops and flips all differ.
    img = Image.fromarray(base).resize((w, h), Image.BILINEAR)
    arr = np.asarray(img).astype(np.int16) + rng.integers(-8, 9, (h, w, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def test_sample_seed_is_a_pure_function_that_separates_samples() -> None:
    assert sample_seed(1, 2, 3) == sample_seed(1, 2, 3)
    seeds = {sample_seed(s, e, i) for s in range(3) for e in range(3) for i in range(50)}
    assert len(seeds) == 450 and all(0 <= s < 2**63 for s in seeds)


def test_crop_params_stay_within_scale_and_ratio() -> None:
    for seed in range(200):
        g = torch.Generator().manual_seed(seed)
        top, left, h, w = resized_crop_params(200, 300, (0.08, 1.0), (3 / 4, 4 / 3), g)
        assert 0 <= top <= 200 - h and 0 <= left <= 300 - w
        # rounding to whole pixels moves area and ratio by at most a pixel's worth
        assert 0.08 * 60000 * 0.97 <= h * w <= 60000
        assert 3 / 4 - 1 / min(h, w) <= w / h <= 4 / 3 + 1 / min(h, w)


def test_crop_falls_back_to_the_largest_centred_crop_within_ratio() -> None:
    # A 10x1000 strip: no crop of area >= 8% fits with ratio <= 4/3 in 10 tries, so
    # the fallback takes the full height and width round(10 * 4/3) = 13, centred.
    g = torch.Generator().manual_seed(0)
    assert resized_crop_params(10, 1000, (0.08, 1.0), (3 / 4, 4 / 3), g) == (0, 493, 10, 13)


def test_eval_transform_is_resize_256_then_centre_crop_224() -> None:
    img = _image()  # 300 wide, 200 high
    out = ImageTransform(size=(224, 224), resize=256)(img)
    # Shorter side 200 -> 256, longer 300 -> int(256 * 300 / 200) = 384; the crop's
    # offsets are round((256 - 224) / 2) = 16 from the top, round((384 - 224) / 2) = 80.
    ref = img.resize((384, 256), Image.BILINEAR).crop((80, 16, 304, 240))
    arr = torch.from_numpy(np.asarray(ref, dtype=np.float32) / 255.0).permute(2, 0, 1)
    mean = torch.tensor(IMAGENET_MEAN)[:, None, None]
    std = torch.tensor(IMAGENET_STD)[:, None, None]
    assert out.shape == (3, 224, 224)
    torch.testing.assert_close(out, (arr - mean) / std, rtol=0, atol=1e-6)


def test_train_transform_is_seeded_per_sample() -> None:
    train, _ = imagenet_transforms((64, 64), 73, backend="kdlab")
    img = _image()
    a, b, c = train(img, seed=11), train(img, seed=11), train(img, seed=12)
    assert torch.equal(a, b) and not torch.equal(a, c)
    with pytest.raises(ValueError, match="per-sample seed"):
        train(img)


def test_tensor_path_matches_the_pillow_path() -> None:
    """Same draws, same geometry; antialiased bilinear differs between Pillow and torch
    by interpolation rounding only (uint8 in both)."""
    img = _image()
    tensor = (pil_to_tensor(img) * 255).round().to(torch.uint8)
    train, evaluation = imagenet_transforms((112, 112), 128, backend="kdlab")
    for transform, seed in ((train, 3), (train, 4), (evaluation, None)):
        a, b = transform(img, seed), transform(tensor, seed)
        assert a.shape == b.shape == (3, 112, 112)
        diff = (a - b).abs() * torch.tensor(IMAGENET_STD)[:, None, None] * 255
        assert float(diff.mean()) < 1.0 and float(diff.max()) <= 12.0, (diff.mean(), diff.max())
    # A flip is a flip: the seed whose draw flips gives the mirror of the one that does not.
    crop_only = ImageTransform((64, 64), 73, random_crop=True, mean=None, std=None)
    flipping = ImageTransform((64, 64), 73, random_crop=True, hflip=True, mean=None, std=None)
    flips = [bool((flipping(img, s) != crop_only(img, s)).any()) for s in range(20)]
    assert 4 <= sum(flips) <= 16
    s = flips.index(True)
    assert torch.equal(flipping(img, s), crop_only(img, s).flip(-1))


@pytest.mark.skipif(
    not torchvision_available(), reason="torchvision does not import beside this torch"
)
def test_torchvision_backend_gives_the_same_output() -> None:
    """kdlab's transforms against torchvision's on a fixed image: identical on Pillow
    images (same draws, same Pillow calls), within interpolation rounding on tensors.
    Run with torch 2.14.1 + torchvision 0.29.1 in a separate venv: passed."""
    img = _image(seed=5)
    tensor = (pil_to_tensor(img) * 255).round().to(torch.uint8)
    ours = imagenet_transforms((224, 224), 256, backend="kdlab")
    theirs = imagenet_transforms((224, 224), 256, backend="torchvision")
    for k, (mine, tv) in enumerate(zip(ours, theirs)):
        seed = 1234 + k if mine.is_random else None
        assert torch.equal(mine(img, seed), tv(img, seed))
        torch.testing.assert_close(mine(tensor, seed), tv(tensor, seed), rtol=0, atol=1e-5)
    assert math.isclose(float(ours[0](img, 7).mean()), float(theirs[0](img, 7).mean()))
