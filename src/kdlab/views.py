"""Input views: batched tensor transforms a term may ask for, per model.

A recipe names its views (``distill.views: {noisy: {type: gaussian_noise, sigma: 0.1}}``)
and a term picks one for the student and one for the teacher (``student_view: noisy``).
Within one step a view is computed once, so teacher and student asking for the same
view see the very same tensor (the same noise sample, say). The view ``default`` is the
batch as the data pipeline gave it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from kdlab.errors import ConfigError, did_you_mean
from kdlab.registry import Registry

ViewFn = Callable[[Tensor], Tensor]
VIEWS: Registry[Callable[..., ViewFn]] = Registry("view")


@VIEWS.register("identity")
def identity() -> ViewFn:
    """The input unchanged (the ``default`` view)."""
    return lambda x: x


@VIEWS.register("gaussian_noise")
def gaussian_noise(sigma: float = 0.1) -> ViewFn:
    """``x + sigma * z`` with ``z ~ N(0, I)`` drawn fresh each step."""
    if not isinstance(sigma, (int, float)) or not 0 <= sigma < float("inf"):  # NaN fails too
        raise ConfigError(f"gaussian_noise: sigma must be a finite number >= 0, got {sigma!r}")
    return lambda x: x + sigma * torch.randn_like(x)


def build_views(specs: Mapping[str, Mapping[str, Any]]) -> dict[str, ViewFn]:
    """Named view functions from ``{name: {type: ..., **params}}``."""
    views: dict[str, ViewFn] = {"default": identity()}
    for name, spec in specs.items():
        if name == "default":
            raise ConfigError("distill.views: 'default' is reserved for the unchanged batch")
        if not isinstance(spec, Mapping) or "type" not in spec:
            raise ConfigError(f"distill.views.{name} must be a mapping with a 'type' key")
        params = {k: v for k, v in spec.items() if k != "type"}
        factory = VIEWS.get(str(spec["type"]))
        try:
            views[name] = factory(**params)
        except TypeError as err:
            raise ConfigError(f"distill.views.{name} ({spec['type']}): {err}") from None
    return views


def check_view(name: str, views: Mapping[str, ViewFn], where: str) -> None:
    if name not in views:
        raise ConfigError(f"{where}: unknown view {name!r}; {did_you_mean(name, views)}")
