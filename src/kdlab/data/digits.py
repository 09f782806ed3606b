"""scikit-learn's digits: 1,797 8x8 grey images of 10 classes, bundled (no download)."""

from __future__ import annotations

import numpy as np
import torch

from kdlab.config import DataConfig
from kdlab.data import DATASETS
from kdlab.data.base import DataBundle, TensorSplit, standardize, stratified_split


@DATASETS.register("digits")
def digits(cfg: DataConfig) -> DataBundle:
    """Deterministic stratified train/val/test splits (``split_seed``), standardised
    with the training split's mean and standard deviation."""
    from sklearn.datasets import load_digits  # noqa: PLC0415 - heavy import

    raw = load_digits()
    x = raw.images.astype(np.float32)[:, None] / 16.0
    y = raw.target.astype(np.int64)
    rest, test = stratified_split(y, cfg.test_fraction, cfg.split_seed)
    train, val = stratified_split(y[rest], cfg.val_fraction, cfg.split_seed + 1)
    train, val = rest[train], rest[val]
    xt = torch.from_numpy(x)
    x_train, x_val, x_test = xt[train], xt[val], xt[test]
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
        name="digits",
    )
