"""Datasets, splits, loaders and batched augmentation.

A dataset builder takes the recipe's :class:`~kdlab.config.DataConfig` and returns a
:class:`DataBundle` of train / val / test splits. Every module in this package is
imported, so adding a dataset means adding one file with ``@DATASETS.register``.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable

from kdlab.config import DataConfig
from kdlab.data.base import DataBundle, TensorSplit, stratified_split, take_per_class
from kdlab.data.loader import TensorLoader, make_loader
from kdlab.registry import Registry

DatasetBuilder = Callable[[DataConfig], DataBundle]
DATASETS: Registry[DatasetBuilder] = Registry("dataset")


def build_dataset(cfg: DataConfig) -> DataBundle:
    """The recipe's dataset, split, with ``per_class`` applied to the training split."""
    bundle = DATASETS.get(cfg.name)(cfg)
    if cfg.per_class is not None:
        bundle.train = take_per_class(bundle.train, cfg.per_class, seed=cfg.split_seed)
    return bundle


for _info in pkgutil.iter_modules(__path__):
    if _info.name not in ("base", "loader"):
        importlib.import_module(f"{__name__}.{_info.name}")

__all__ = [
    "DATASETS",
    "DataBundle",
    "TensorLoader",
    "TensorSplit",
    "build_dataset",
    "make_loader",
    "stratified_split",
    "take_per_class",
]
