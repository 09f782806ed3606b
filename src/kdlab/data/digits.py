"""scikit-learn's digits: 1,797 8x8 grey images of 10 classes, bundled (no download)."""

from __future__ import annotations

import numpy as np
import torch

from kdlab.config import DataConfig
from kdlab.data import register_dataset
from kdlab.data.base import DataBundle, TensorSplit, standardize, stratified_split


def load_digits_arrays() -> tuple[torch.Tensor, np.ndarray]:
    """All digits: inputs (N, 1, 8, 8) in [0, 1] and integer labels."""
    from sklearn.datasets import load_digits  # noqa: PLC0415 - heavy import

    raw = load_digits()
    x = torch.from_numpy(raw.images.astype(np.float32)[:, None] / 16.0)
    return x, raw.target.astype(np.int64)


def digits_bundle(
    cfg: DataConfig,
    x: torch.Tensor,
    y: np.ndarray,
    splits: tuple[np.ndarray, np.ndarray, np.ndarray],
    name: str,
    extra: dict[str, object] | None = None,
) -> DataBundle:
    """A bundle from index arrays ``(train, val, test)``, standardised on train."""
    train, val, test = splits
    x_train, x_val, x_test = x[train], x[val], x[test]
    if cfg.normalize:
        x_train, x_val, x_test = standardize(x_train, x_val, x_test)
    yt = torch.from_numpy(y)
    return DataBundle(
        train=TensorSplit(x_train, yt[train]),
        val=TensorSplit(x_val, yt[val]) if len(val) else None,
        test=TensorSplit(x_test, yt[test]),
        num_classes=10,
        in_channels=1,
        image_size=(8, 8),
        name=name,
        extra=extra or {},
    )


@register_dataset("digits")
def digits(cfg: DataConfig) -> DataBundle:
    """Deterministic stratified train/val/test splits (``split_seed``), standardised
    with the training split's mean and standard deviation."""
    x, y = load_digits_arrays()
    rest, test = stratified_split(y, cfg.test_fraction, cfg.split_seed)
    train, val = stratified_split(y[rest], cfg.val_fraction, cfg.split_seed + 1)
    return digits_bundle(cfg, x, y, (rest[train], rest[val], test), "digits")
