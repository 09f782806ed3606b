"""A batch's model input: one tensor, or a dict of named tensors passed as keyword arguments.

Image and sequence models take one tensor (``model(x)``); transformers take several
(``model(input_ids=..., attention_mask=..., token_type_ids=...)``, or ``pixel_values``).
kdlab carries either as :data:`Inputs` from the loader through the Distiller, the step,
the evaluators and export, and every place that touches an input goes through the
helpers here. Integer tensors (token ids, masks) keep their dtype end to end; only
floating-point tensors are ever transformed (augmentation, views, ``channels_last``,
input gradients), and a transform that is asked to touch an integer input refuses it,
naming the input (:func:`float_inputs`).

In messages, a plain tensor input is called ``input`` (its name in exported graphs).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Union

import torch
from torch import Tensor, nn

from kdlab.errors import ConfigError, did_you_mean

Inputs = Union[Tensor, dict[str, Tensor]]  # noqa: UP007 - a runtime alias, also on py3.10
PLAIN = "input"  # what messages and exported graphs call a one-tensor input


def call_model(model: nn.Module, x: Inputs) -> Any:
    """``model(x)``, or ``model(**x)`` for a dict batch."""
    return model(**x) if isinstance(x, Mapping) else model(x)


def named(x: Inputs) -> dict[str, Tensor]:
    """The input's tensors by name (``{"input": x}`` for a plain tensor)."""
    return dict(x) if isinstance(x, Mapping) else {PLAIN: x}


def map_inputs(
    x: Inputs, fn: Callable[[Tensor], Tensor], keys: Sequence[str | None] | None = None
) -> Inputs:
    """``fn`` applied to every tensor (or to ``keys``: names of a dict batch, ``None`` for a
    plain tensor); a dict batch comes back as a new dict with the other tensors as they were."""
    if not isinstance(x, Mapping):
        return fn(x) if keys is None or None in keys or PLAIN in keys else x
    chosen = x.keys() if keys is None else keys
    return {k: fn(v) if k in chosen else v for k, v in x.items()}


def head(x: Inputs, n: int) -> Inputs:
    """The first ``n`` samples."""
    return map_inputs(x, lambda t: t[:n])


def take(x: Inputs, idx: Tensor) -> Inputs:
    """The samples at ``idx``."""
    return map_inputs(x, lambda t: t[idx])


def to_device(x: Inputs, device: torch.device | str, non_blocking: bool = False) -> Inputs:
    return map_inputs(x, lambda t: t.to(device, non_blocking=non_blocking))


def num_samples(x: Inputs) -> int:
    """The batch size (the first dimension; every tensor of a dict batch shares it)."""
    return int(next(iter(named(x).values())).shape[0])


def device_of(x: Inputs) -> torch.device:
    return next(iter(named(x).values())).device


def requires_grad(x: Inputs) -> bool:
    return any(t.requires_grad for t in named(x).values())


def detach(x: Inputs) -> Inputs:
    return map_inputs(x, Tensor.detach)


def describe(x: Inputs) -> str:
    """``"input_ids int64 (4, 8), attention_mask int64 (4, 8)"``: what a batch holds."""
    return ", ".join(
        f"{k} {str(t.dtype).replace('torch.', '')} {tuple(t.shape)}" for k, t in named(x).items()
    )


def images(x: Inputs) -> list[Tensor]:
    """The float image tensors ``(N, C, H, W)`` of a batch (what augmentation and
    ``channels_last`` touch)."""
    return [t for t in named(x).values() if t.is_floating_point() and t.dim() == 4]


def map_images(x: Inputs, fn: Callable[[Tensor], Tensor]) -> Inputs:
    """``fn`` applied to the float image tensors ``(N, C, H, W)`` only."""
    return map_inputs(x, lambda t: fn(t) if t.is_floating_point() and t.dim() == 4 else t)


def float_inputs(x: Inputs, declared: Sequence[str] | None, who: str) -> list[str | None]:
    """The inputs a transform of floating-point values applies to: the ``declared`` names,
    or every floating-point tensor. Keys for :func:`map_inputs` (``None`` is a plain tensor).

    ``who`` names the transform (``"view 'noisy' (gaussian_noise)"``) in the ConfigError
    raised for a name the batch lacks, an integer input (token ids, masks: adding noise or
    taking gradients means nothing there), or a batch with no floating-point input.
    """
    tensors = named(x)
    plain = not isinstance(x, Mapping)
    if declared is None:
        chosen = [k for k, t in tensors.items() if t.is_floating_point()]
        if not chosen:
            raise ConfigError(
                f"{who} transforms floating-point inputs, but the batch holds only integer "
                f"ones ({describe(x)}); it cannot apply to token ids or masks"
            )
    else:
        chosen = list(declared)
        for k in chosen:
            if k not in tensors:
                shape = "one tensor, called 'input'" if plain else f"inputs {list(tensors)}"
                raise ConfigError(
                    f"{who}: its input {k!r} is not in the batch, which holds {shape}; "
                    f"{did_you_mean(k, tensors)}"
                )
            if not tensors[k].is_floating_point():
                floats = [n for n, t in tensors.items() if t.is_floating_point()]
                raise ConfigError(
                    f"{who} transforms floating-point inputs, but input {k!r} is "
                    f"{str(tensors[k].dtype).replace('torch.', '')} (token ids or a mask?); "
                    + (f"float inputs: {floats}" if floats else "the batch has no float input")
                )
    return [None if plain else k for k in chosen]
