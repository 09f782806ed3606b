"""``degrade_eval``: the validation and test splits degraded once, by the run's own view
(cross quality distillation, Su & Maji, arXiv:1604.00433: select and test on the
degraded signal the student is meant for)."""

from __future__ import annotations

import dataclasses

from kdlab.bench.hooks.base import DATA_HOOKS, HookContext
from kdlab.data import DataBundle, TensorSplit
from kdlab.errors import ConfigError, did_you_mean
from kdlab.views.degrade import degrade_tensor


@DATA_HOOKS.register("degrade_eval")
def degrade_eval(
    bundle: DataBundle,
    ctx: HookContext,
    view: str = "degraded",
    val_seed: int = 1,
    test_seed: int = 2,
) -> DataBundle:
    """Validation and test splits through ``distill.views[view]`` of the run's recipe,
    with fixed seeds (the same degraded copies for every run); training data unchanged
    (the recipe's terms apply the view per step)."""
    views = ctx.cfg.distill.views
    if view not in views:
        raise ConfigError(
            f"degrade_eval: the recipe has no view {view!r} in distill.views; "
            f"{did_you_mean(view, views)}"
        )
    spec = views[view]
    val = bundle.val
    if val is not None:
        val = TensorSplit(degrade_tensor(val.x, spec, seed=val_seed), val.y)
    test = TensorSplit(degrade_tensor(bundle.test.x, spec, seed=test_seed), bundle.test.y)
    return dataclasses.replace(bundle, val=val, test=test, name=f"{bundle.name}-degraded")
