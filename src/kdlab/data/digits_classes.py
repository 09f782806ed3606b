"""Digits with disjoint train and test classes, for metric learning (retrieval).

``data: {name: digits_classes, options: {train_classes: [0, 1, 2, 3, 4]}}``: train and
val hold samples of the training classes (val is a stratified hold-out of them, for
model selection); test holds every sample of the other classes, never seen in
training, over which retrieval (Recall@K) is measured. Standardised with the training
split's statistics.
"""

from __future__ import annotations

import numpy as np

from kdlab.config import DataConfig
from kdlab.data import options_for, register_dataset
from kdlab.data.base import DataBundle, stratified_split
from kdlab.data.digits import digits_bundle, load_digits_arrays
from kdlab.errors import ConfigError


@register_dataset("digits_classes", options={"train_classes": [0, 1, 2, 3, 4]})
def digits_classes(cfg: DataConfig) -> DataBundle:
    """Digits, train/val on ``options.train_classes`` (default 0-4), test on the rest."""
    train_classes = [int(c) for c in options_for(cfg)["train_classes"]]
    if not train_classes or any(c < 0 or c > 9 for c in train_classes):
        raise ConfigError(f"data.options.train_classes must be digits 0..9, got {train_classes}")
    if len(set(train_classes)) == 10:
        raise ConfigError("data.options.train_classes must leave some classes for testing")
    x, y = load_digits_arrays()
    seen = np.isin(y, train_classes)
    seen_idx, test_idx = np.flatnonzero(seen), np.flatnonzero(~seen)
    keep, held = stratified_split(y[seen_idx], cfg.val_fraction, cfg.split_seed)
    splits = (seen_idx[keep], seen_idx[held], test_idx)
    extra = {"train_classes": sorted(set(train_classes))}
    return digits_bundle(cfg, x, y, splits, "digits_classes", extra)
