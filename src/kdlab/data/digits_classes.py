"""Digits with disjoint train and test classes, for metric learning (retrieval).

``data: {name: digits_classes, options: {train_classes: [0, 1, 2, 3, 4]}}``: train and
val hold samples of the training classes (val is a stratified hold-out of them, for
model selection); test holds every sample of the other classes, never seen in
training, over which retrieval (Recall@K) is measured. Standardised with the training
split's statistics.
"""

from __future__ import annotations

import numpy as np
import torch

from kdlab.config import DataConfig
from kdlab.data import DATASETS
from kdlab.data.base import DataBundle, TensorSplit, standardize, stratified_split
from kdlab.errors import ConfigError


@DATASETS.register("digits_classes")
def digits_classes(cfg: DataConfig) -> DataBundle:
    """Digits, train/val on ``options.train_classes`` (default 0-4), test on the rest."""
    from sklearn.datasets import load_digits  # noqa: PLC0415 - heavy import

    unknown = set(cfg.options) - {"train_classes"}
    if unknown:
        raise ConfigError(
            f"data.options: unknown key(s) {sorted(unknown)} for digits_classes; "
            "valid: train_classes"
        )
    train_classes = [int(c) for c in cfg.options.get("train_classes", [0, 1, 2, 3, 4])]
    if not train_classes or any(c < 0 or c > 9 for c in train_classes):
        raise ConfigError(
            f"data.options.train_classes must be digits 0..9, got {train_classes}"
        )
    if len(set(train_classes)) == 10:
        raise ConfigError("data.options.train_classes must leave some classes for testing")
    raw = load_digits()
    x = torch.from_numpy(raw.images.astype(np.float32)[:, None] / 16.0)
    y = raw.target.astype(np.int64)
    seen = np.isin(y, train_classes)
    seen_idx, test_idx = np.flatnonzero(seen), np.flatnonzero(~seen)
    keep, held = stratified_split(y[seen_idx], cfg.val_fraction, cfg.split_seed)
    train, val = seen_idx[keep], seen_idx[held]
    x_train, x_val, x_test = x[train], x[val], x[test_idx]
    if cfg.normalize:
        x_train, x_val, x_test = standardize(x_train, x_val, x_test)
    yt = torch.from_numpy(y)
    return DataBundle(
        train=TensorSplit(x_train, yt[train]),
        val=TensorSplit(x_val, yt[val]) if len(val) else None,
        test=TensorSplit(x_test, yt[test_idx]),
        num_classes=10,
        in_channels=1,
        image_size=(8, 8),
        name="digits_classes",
        extra={"train_classes": sorted(set(train_classes))},
    )
