"""``few_shot``: n training samples per class, drawn per seed (Srinivas & Fleuret,
arXiv:1803.00443, sec. 5: students trained on a few samples per class)."""

from __future__ import annotations

import dataclasses
import math

from kdlab.bench.hooks.base import DATA_HOOKS, HookContext
from kdlab.data import DataBundle, TensorSplit, take_per_class
from kdlab.errors import ConfigError


def repeat_to(split: TensorSplit, minimum: int) -> TensorSplit:
    """``split`` repeated whole so that it holds at least ``minimum`` samples."""
    reps = max(1, math.ceil(minimum / len(split)))
    shape = (reps,) + (1,) * (split.x.dim() - 1)
    return TensorSplit(split.x.repeat(*shape), split.y.repeat(reps))


@DATA_HOOKS.register("few_shot")
def few_shot(
    bundle: DataBundle, ctx: HookContext, per_class: int, epoch_samples: int = 256
) -> DataBundle:
    """``per_class`` training samples of each class, drawn with the run's seed, repeated
    whole so that an epoch shows at least ``epoch_samples`` (same distribution, fewer
    per-epoch evaluations); validation and test splits unchanged."""
    if not isinstance(per_class, int) or per_class < 1:
        raise ConfigError(f"few_shot: per_class must be an integer >= 1, got {per_class!r}")
    if not isinstance(epoch_samples, int) or epoch_samples < 1:
        raise ConfigError(f"few_shot: epoch_samples must be an integer >= 1, got {epoch_samples!r}")
    train = repeat_to(take_per_class(bundle.train, per_class, seed=ctx.seed), epoch_samples)
    extra = {**bundle.extra, "per_class": per_class, "subset_seed": ctx.seed}
    return dataclasses.replace(bundle, train=train, extra=extra)
