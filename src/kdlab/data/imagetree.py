"""A small ImageNet-layout tree of real JPEGs made from the bundled digits, for tests,
benchmarks and smoke runs of the streaming path (no download).

``make_image_tree(root, per_class=30, size=64)`` writes ``root/train/<class>/*.jpg`` and
``root/val/<class>/*.jpg`` (10 classes ``digit0`` .. ``digit9``): each digit upsampled to
``size`` x ``size``, coloured with a per-image tint so the three channels differ.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kdlab.data.folder import _import_pil


def make_image_tree(
    root: str | Path,
    per_class: int = 30,
    size: int | tuple[int, int] = 64,
    splits: dict[str, int] | None = None,
    seed: int = 0,
    quality: int = 90,
) -> Path:
    """Write the tree; ``splits`` maps split folder -> images per class (default
    ``{"train": per_class, "val": max(per_class // 5, 1)}``). Returns ``root``."""
    from kdlab.data.digits import load_digits_arrays  # noqa: PLC0415

    image = _import_pil()
    root = Path(root)
    h, w = (size, size) if isinstance(size, int) else size
    splits = splits or {"train": per_class, "val": max(per_class // 5, 1)}
    x, y = load_digits_arrays()
    grey = (x[:, 0].numpy() * 255).astype(np.uint8)
    rng = np.random.default_rng(seed)
    used = np.zeros(len(y), dtype=np.int64)
    for split, count in splits.items():
        for c in range(10):
            folder = root / split / f"digit{c}"
            folder.mkdir(parents=True, exist_ok=True)
            pool = np.flatnonzero(y == c)
            for k in range(count):
                i = pool[(used[c] + k) % len(pool)]
                base = image.fromarray(grey[i]).resize((w, h), image.BILINEAR)
                a = np.asarray(base, dtype=np.float32)[:, :, None] / 255.0
                fg, bg = rng.uniform(0.3, 1.0, 3), rng.uniform(0.0, 0.3, 3)
                rgb = (a * fg + (1 - a) * bg) * 255.0
                rgb += rng.normal(0.0, 6.0, rgb.shape)  # texture, so crops differ
                img = image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8), "RGB")
                img.save(folder / f"{split}_{c}_{k:05d}.jpg", quality=quality)
            used[c] += count
    return root
