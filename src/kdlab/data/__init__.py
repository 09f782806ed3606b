"""Datasets, splits, loaders and batched augmentation.

A dataset builder takes the recipe's :class:`~kdlab.config.DataConfig` and returns a
:class:`DataBundle` of train / val / test splits. Every module in this package is
imported, so adding a dataset means adding one file with ``@DATASETS.register``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from kdlab.config import DataConfig
from kdlab.data._options import dataset_options
from kdlab.data.base import (
    DataBundle,
    TensorSplit,
    held_in_memory,
    stratified_split,
    take_per_class,
)
from kdlab.data.loader import TensorLoader, make_loader
from kdlab.registry import Registry, import_submodules

DatasetBuilder = Callable[[DataConfig], DataBundle]
DATASETS: Registry[DatasetBuilder] = Registry("dataset")
# Each dataset's data.options keys and their defaults, declared where it is registered.
DATASET_OPTIONS: dict[str, dict[str, Any]] = {}


def register_dataset(
    name: str, options: Mapping[str, Any] | None = None
) -> Callable[[DatasetBuilder], DatasetBuilder]:
    """Decorator registering ``fn(cfg) -> DataBundle`` and the ``data.options`` it takes
    (``{key: default}``; none by default). :func:`build_dataset` refuses any other key
    with a did-you-mean before the builder runs; the builder reads the merged values
    with :func:`options_for`."""

    def deco(fn: DatasetBuilder) -> DatasetBuilder:
        DATASETS.add(name, fn)
        DATASET_OPTIONS[name] = dict(options or {})
        return fn

    return deco


def options_for(cfg: DataConfig) -> dict[str, Any]:
    """The dataset's declared options with the recipe's ``data.options`` applied."""
    return dataset_options(cfg.name, cfg.options, DATASET_OPTIONS.get(cfg.name, {}))


def build_dataset(cfg: DataConfig) -> DataBundle:
    """The recipe's dataset, split, with ``per_class`` applied to the training split."""
    builder = DATASETS.get(cfg.name)
    if cfg.name in DATASET_OPTIONS:  # every kdlab dataset; a bare DATASETS entry checks itself
        options_for(cfg)
    bundle = builder(cfg)
    if cfg.per_class is not None:
        bundle.train = take_per_class(bundle.train, cfg.per_class, seed=cfg.split_seed)
    return bundle


import_submodules(__name__, __path__, skip=("base", "loader", "_options"))

__all__ = [
    "DATASETS",
    "DATASET_OPTIONS",
    "DataBundle",
    "TensorLoader",
    "TensorSplit",
    "build_dataset",
    "held_in_memory",
    "make_loader",
    "options_for",
    "register_dataset",
    "stratified_split",
    "take_per_class",
]
