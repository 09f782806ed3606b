"""Models: a registry and ``create_model``, in the style of timm.

Every module in this package is imported so its ``@register_model`` entries exist.
``tv:NAME`` and ``timm:NAME`` build torchvision / timm models when those optional
extras are installed (``pip install kdlab[vision]``). No model here is edited to
return features: use taps.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from kdlab.errors import ModelError
from kdlab.registry import Registry, import_submodules
from kdlab.taps import OutputChoice, select_output

ModelFactory = Callable[..., nn.Module]
MODELS: Registry[ModelFactory] = Registry("model")


def register_model(name: str | None = None) -> Callable[[ModelFactory], ModelFactory]:
    """Decorator registering ``fn(num_classes, in_channels, **kwargs) -> nn.Module``."""
    return MODELS.register(name)


def create_model(
    name: str,
    num_classes: int | None = None,
    in_channels: int | None = None,
    /,
    output: OutputChoice = None,
    **kwargs: Any,
) -> nn.Module:
    """Build a registered model, or ``tv:NAME`` / ``timm:NAME`` from those libraries.

    ``num_classes`` (required) and ``in_channels`` (default 3) may be given by position
    or keyword. ``output`` says which part of a tuple / dict output is the logits (see
    :func:`kdlab.taps.select_output`); every model built here returns its logits.
    """
    # Positional-only, so that a recipe's kwargs holding num_classes or in_channels
    # (create_model(name, n, c, **kwargs)) reach the check below, not a raw TypeError.
    for key, given in (("num_classes", num_classes), ("in_channels", in_channels)):
        if key in kwargs:
            if given is not None:
                hint = (
                    " (for npz and MNIST-format data, data.options.num_classes and "
                    "data.options.label_map set the classes)"
                    if key == "num_classes"
                    else ""
                )
                raise ModelError(
                    f"model {name!r}: kwargs set {key}={kwargs[key]!r}, but {key} comes from "
                    f"the data ({given}); remove it from the model's kwargs{hint}"
                )
            given = kwargs.pop(key)
        if key == "num_classes":
            num_classes = given
        else:
            in_channels = 3 if given is None else given
    if num_classes is None:
        raise ModelError(f"model {name!r}: num_classes is required")
    assert in_channels is not None
    for key, value in (("num_classes", num_classes), ("in_channels", in_channels)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ModelError(f"model {name!r}: {key} must be an integer >= 1, got {value!r}")
    if name.startswith("tv:"):
        model = _torchvision_model(name[3:], num_classes, in_channels, **kwargs)
    elif name.startswith("timm:"):
        model = _timm_model(name[5:], num_classes, in_channels, **kwargs)
    else:
        factory = MODELS.get(name)
        try:
            model = factory(num_classes=num_classes, in_channels=in_channels, **kwargs)
        except (TypeError, ValueError, RuntimeError, IndexError) as err:
            # Bad student.kwargs / teacher.kwargs (a negative width, dropout 2) reach torch's
            # layer constructors; name the model and its kwargs instead of a torch traceback.
            raise ModelError(f"model {name!r} with kwargs {kwargs}: {err}") from err
    return select_output(model, output, num_classes, f"model {name!r}")


def _torchvision_model(name: str, num_classes: int, in_channels: int, **kwargs: Any) -> nn.Module:
    try:
        import torchvision.models as tvm  # noqa: PLC0415 - optional extra
    except Exception as err:  # ImportError, or a broken install (operator not found)
        raise ModelError(
            f"model 'tv:{name}' needs torchvision, which is not importable here ({err}); "
            "install the extra: pip install 'kdlab[vision]'"
        ) from None
    if in_channels != 3:
        raise ModelError(f"model 'tv:{name}': torchvision models take 3 input channels")
    try:
        return tvm.get_model(name, weights=None, num_classes=num_classes, **kwargs)
    except ValueError as err:
        raise ModelError(f"model 'tv:{name}': {err}") from None


def _timm_model(name: str, num_classes: int, in_channels: int, **kwargs: Any) -> nn.Module:
    try:
        import timm  # noqa: PLC0415 - optional extra
    except Exception as err:
        raise ModelError(
            f"model 'timm:{name}' needs timm, which is not importable here ({err}); "
            "install the extra: pip install 'kdlab[vision]'"
        ) from None
    try:
        return timm.create_model(
            name, pretrained=False, num_classes=num_classes, in_chans=in_channels, **kwargs
        )
    except RuntimeError as err:
        raise ModelError(f"model 'timm:{name}': {err}") from None


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


import_submodules(__name__, __path__, skip=())

__all__ = ["MODELS", "count_parameters", "create_model", "register_model"]
