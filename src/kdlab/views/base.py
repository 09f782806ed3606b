"""The view registry and how recipes build views from it.

A view factory takes its parameters and returns a batched tensor transform
``(N, ...) -> (N, ...)``; ``build_view({type: name, **params})`` looks the factory up
and calls it, so a bad parameter is an error at load time, naming the view.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from torch import Tensor

from kdlab.errors import ConfigError, did_you_mean
from kdlab.registry import Registry

ViewFn = Callable[[Tensor], Tensor]
VIEWS: Registry[Callable[..., ViewFn]] = Registry("view")
DEFAULT = "default"  # the batch as the data pipeline gave it


def build_view(spec: Any, where: str = "view") -> ViewFn:
    """One view function from ``{type: ..., **params}`` (a mapping or a ViewSpec)."""
    if hasattr(spec, "model_dump"):
        spec = spec.model_dump()
    if not isinstance(spec, Mapping) or "type" not in spec:
        raise ConfigError(f"{where} must be a mapping with a 'type' key, got {spec!r}")
    params = {k: v for k, v in spec.items() if k != "type"}
    factory = VIEWS.get(str(spec["type"]))
    try:
        return factory(**params)
    except TypeError as err:
        raise ConfigError(f"{where} ({spec['type']}): {err}") from None


def build_views(specs: Mapping[str, Any]) -> dict[str, ViewFn]:
    """Named view functions from ``{name: {type: ..., **params}}``, plus ``default``."""
    views: dict[str, ViewFn] = {DEFAULT: identity()}
    for name, spec in specs.items():
        if name == DEFAULT:
            raise ConfigError("distill.views: 'default' is reserved for the unchanged batch")
        views[name] = build_view(spec, f"distill.views.{name}")
    return views


def check_view(name: str, views: Mapping[str, ViewFn], where: str) -> None:
    if name not in views:
        raise ConfigError(f"{where}: unknown view {name!r}; {did_you_mean(name, views)}")


def _same(x: Tensor) -> Tensor:
    return x


@VIEWS.register("identity")
def identity() -> ViewFn:
    """The input unchanged."""
    return _same
