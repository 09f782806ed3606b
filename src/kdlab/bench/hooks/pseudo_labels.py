"""``pseudo_labels``: the teacher's predictions on the unlabelled share, ensembled over
transforms, join the labelled data (data distillation, Radosavovic et al.,
arXiv:1712.04440; the pieces are :mod:`kdlab.pipelines.data_distillation`'s)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from kdlab.bench.hooks.base import PRE_STEPS, HookContext
from kdlab.bench.hooks.labelled_subset import UNLABELLED
from kdlab.config import RunConfig
from kdlab.data import DataBundle, TensorSplit
from kdlab.errors import ConfigError
from kdlab.pipelines.data_distillation import (
    _batches,
    build_transforms,
    ensemble_probabilities,
    pseudo_labels,
)

IDENTITY = ({"type": "identity"},)


@PRE_STEPS.register("pseudo_labels")
def pseudo_label_step(
    bundle: DataBundle,
    ctx: HookContext,
    transforms: Sequence[Mapping[str, Any]] = IDENTITY,
    threshold: float = 0.0,
    match_steps: bool = True,
) -> tuple[DataBundle, RunConfig]:
    """Label ``bundle.extra['unlabelled']`` with the teacher's class probabilities
    averaged over ``transforms`` (argmax, kept when the top probability is at least
    ``threshold``) and train on labelled plus pseudo-labelled samples.

    ``match_steps`` gives the run at least as many optimiser steps as its teacher had on
    the labelled share alone, so a small pseudo-labelled set is not an under-trained one.
    """
    fns = build_transforms(list(transforms))
    if not 0.0 <= threshold <= 1.0:
        raise ConfigError(f"pseudo_labels: threshold must lie in [0, 1], got {threshold!r}")
    unlabelled = bundle.extra.get(UNLABELLED)
    if not isinstance(unlabelled, TensorSplit):
        raise ConfigError(
            "pseudo_labels needs unlabelled samples: put the labelled_subset data hook first"
        )
    if ctx.load_teacher is None or ctx.teacher_cfg is None:
        raise ConfigError("pseudo_labels needs the pair's teacher (the labelled-data model)")
    probs = ensemble_probabilities(
        ctx.load_teacher(bundle), unlabelled.x, fns, ctx.cfg.data.eval_batch_size
    )
    labels, keep = pseudo_labels(probs, threshold)
    kept = keep.nonzero().flatten()
    train = TensorSplit(
        torch.cat([bundle.train.x, unlabelled.x[kept]]),
        torch.cat([bundle.train.y, labels[kept]]),
    )
    cfg = ctx.cfg
    if match_steps:
        t = ctx.teacher_cfg
        steps = t.train.epochs * _batches(len(bundle.train), t.data.batch_size)
        epochs = math.ceil(steps / _batches(len(train), cfg.data.batch_size))
        if epochs > cfg.train.epochs:
            cfg = cfg.model_copy(deep=True)
            cfg.train.epochs = epochs
    right = float((labels[kept] == unlabelled.y[kept]).float().mean()) if len(kept) else 0.0
    info = {
        "n_labelled": len(bundle.train),
        "n_unlabelled": len(unlabelled),
        "n_pseudo": int(len(kept)),
        "pseudo_acc": 100.0 * right,
    }
    extra = {k: v for k, v in bundle.extra.items() if k != UNLABELLED}
    return dataclasses.replace(bundle, train=train, extra={**extra, "pre_step": info}), cfg
