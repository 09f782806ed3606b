"""The view registry and how recipes build views from it.

A view factory takes its parameters and returns a batched tensor transform
``(N, ...) -> (N, ...)``; ``build_view({type: name, **params})`` looks the factory up
and calls it, so a bad parameter is an error at load time, naming the view.

Which inputs a view transforms: a batch is one tensor or a dict of named tensors
(:mod:`kdlab.inputs`). A view applies to every floating-point tensor of the batch, or
to the ones its ``input`` key names (``{type: gaussian_noise, input: pixel_values}``, or
a list); asked to touch an integer input (token ids, masks) it refuses, naming the view
and the input. The tensor transforms themselves never see a dict.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from torch import Tensor

from kdlab.errors import ConfigError, did_you_mean
from kdlab.inputs import Inputs, float_inputs, map_inputs
from kdlab.registry import Registry

ViewFn = Callable[[Tensor], Tensor]
VIEWS: Registry[Callable[..., ViewFn]] = Registry("view")
DEFAULT = "default"  # the batch as the data pipeline gave it


class InputView:
    """A tensor transform applied to a batch's floating-point inputs (or the declared
    ``inputs``); ``who`` names it in errors (``"view 'noisy' (gaussian_noise)"``)."""

    def __init__(self, fn: ViewFn, who: str, inputs: Sequence[str] | None = None) -> None:
        self.fn, self.who = fn, who
        self.inputs = None if inputs is None else list(inputs)

    def __call__(self, x: Inputs) -> Inputs:
        if self.fn is _same:
            return x
        return map_inputs(x, self.fn, float_inputs(x, self.inputs, self.who))

    def __repr__(self) -> str:
        return f"InputView({self.who}, inputs={self.inputs})"


def as_view(fn: Callable[..., Any], name: str) -> InputView:
    """``fn`` as an :class:`InputView` (a plain tensor function applies to every
    floating-point input)."""
    return fn if isinstance(fn, InputView) else InputView(fn, f"view {name!r}")


def _declared_inputs(value: Any, where: str) -> list[str] | None:
    if value is None:
        return None
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise ConfigError(
            f"{where}: 'input' names the batch inputs the view transforms: a name such as "
            f"pixel_values, or a list of names; got {value!r}"
        )
    return names


def build_view(spec: Any, where: str = "view") -> InputView:
    """One view from ``{type: ..., input: ..., **params}`` (a mapping or a ViewSpec)."""
    if hasattr(spec, "model_dump"):
        spec = spec.model_dump()
    if not isinstance(spec, Mapping) or "type" not in spec:
        raise ConfigError(f"{where} must be a mapping with a 'type' key, got {spec!r}")
    params = {k: v for k, v in spec.items() if k not in ("type", "input")}
    inputs = _declared_inputs(spec.get("input"), f"{where} ({spec['type']})")
    factory = VIEWS.get(str(spec["type"]))
    try:
        fn = factory(**params)
    except TypeError as err:
        raise ConfigError(f"{where} ({spec['type']}): {err}") from None
    return InputView(fn, f"{where} ({spec['type']})", inputs)


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
