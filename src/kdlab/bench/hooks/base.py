"""The registries of bench hooks: what a study changes around the one training loop.

- a **data hook** ``hook(bundle, ctx, **params) -> DataBundle`` transforms a run's data
  before training (a few-shot subset per seed, degraded evaluation splits, a labelled
  share). It must be deterministic in ``ctx.seed`` and its params: a cached run is
  identified by them.
- a **pre-step** ``step(bundle, ctx, **params) -> (DataBundle, RunConfig)`` runs after
  the run's teacher is trained and before the run itself (pseudo-labels from the
  teacher for data distillation); it may also adjust the run's recipe.

A protocol names hooks as ``{hook: NAME, **params}``; names and parameters are checked
before anything trains.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from kdlab.config import RunConfig
from kdlab.data import DataBundle
from kdlab.errors import ConfigError, KdlabError, did_you_mean
from kdlab.registry import Registry

DataHook = Callable[..., DataBundle]
PreStep = Callable[..., tuple[DataBundle, RunConfig]]

DATA_HOOKS: Registry[DataHook] = Registry("bench data hook")
PRE_STEPS: Registry[PreStep] = Registry("bench pre-step")


@dataclass
class HookContext:
    """What a hook may know about the run it prepares."""

    seed: int
    cfg: RunConfig
    kind: str  # "teacher", "baseline" or "method"
    teacher_cfg: RunConfig | None = None  # the recipe the run's teacher was trained with
    # pre-steps only: the trained teacher, built for a bundle's classes and channels
    load_teacher: Callable[[DataBundle], nn.Module] | None = field(default=None, repr=False)


@dataclass(frozen=True)
class HookCall:
    """A hook with its parameters bound (checked against its signature)."""

    name: str
    params: dict[str, Any]
    fn: Callable[..., Any]

    def __call__(self, bundle: DataBundle, ctx: HookContext) -> Any:
        return self.fn(bundle, ctx, **self.params)


def bind_hook(registry: Registry[Any], spec: Any, where: str) -> HookCall:
    """``{hook: NAME, **params}`` -> a HookCall; unknown names and parameters are errors."""
    if not isinstance(spec, Mapping) or "hook" not in spec:
        raise ConfigError(f"{where} must be a mapping with a 'hook' key, got {spec!r}")
    name = str(spec["hook"])
    try:
        fn = registry.get(name)
    except KdlabError as err:
        raise ConfigError(f"{where}: {err}") from None
    params = {k: v for k, v in spec.items() if k != "hook"}
    sig = inspect.signature(fn)
    accepted = [p for p in list(sig.parameters)[2:]]
    for key in params:
        if key not in accepted:
            raise ConfigError(
                f"{where}: {registry.kind} {name!r} has no parameter {key!r}; "
                f"{did_you_mean(key, accepted)}"
            )
    try:
        sig.bind(None, None, **params)
    except TypeError as err:
        raise ConfigError(f"{where}: {registry.kind} {name!r}: {err}") from None
    return HookCall(name, params, fn)
