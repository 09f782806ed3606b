"""``labelled_subset``: train on a labelled share; the rest is kept, unlabelled, for a
pre-step (data distillation, Radosavovic et al., arXiv:1712.04440)."""

from __future__ import annotations

import dataclasses

from kdlab.bench.hooks.base import DATA_HOOKS, HookContext
from kdlab.data import DataBundle
from kdlab.errors import ConfigError
from kdlab.pipelines.data_distillation import split_labelled

UNLABELLED = "unlabelled"  # bundle.extra key of the held-back training samples


@DATA_HOOKS.register("labelled_subset")
def labelled_subset(bundle: DataBundle, ctx: HookContext, fraction: float) -> DataBundle:
    """A stratified ``fraction`` of the training split, fixed by ``data.split_seed``
    (the run seed only changes initialisation and batch order); the other samples go to
    ``bundle.extra['unlabelled']`` with their labels hidden from training."""
    if not isinstance(fraction, (int, float)) or not 0.0 < fraction < 1.0:
        raise ConfigError(f"labelled_subset: fraction must lie in (0, 1), got {fraction!r}")
    labelled, rest = split_labelled(bundle.train, float(fraction), ctx.cfg.data.split_seed)
    return dataclasses.replace(bundle, train=labelled, extra={**bundle.extra, UNLABELLED: rest})
