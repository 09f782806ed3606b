"""Taps: capture any module's output or input by dotted path, without editing models.

A tap string is ``"layer2.1.bn2"`` (the module's output) or ``"layer2.1.relu:input"``
(its first positional input, e.g. a pre-activation). The empty path ``""`` is the
model itself, so ``":output"`` is its raw output and ``"fc:input"`` the penultimate
features of most classifiers. A module that returns a tuple gives its first tensor;
``":output.K"`` (or ``":input.K"``) picks element K instead, e.g. the attention
probabilities of a Hugging Face self-attention module,
``"bert.encoder.layer.0.attention.self:output.1"``.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from kdlab.errors import TapError

TapKind = Literal["output", "input"]


@dataclass(frozen=True)
class Tap:
    """Where a feature comes from: a module path and whether its output or input."""

    path: str
    kind: TapKind = "output"
    index: int | None = None  # element of a tuple output / of the positional inputs

    @classmethod
    def parse(cls, spec: str | Tap) -> Tap:
        if isinstance(spec, Tap):
            return spec
        if not isinstance(spec, str):
            raise TapError(f"a tap must be a string like 'layer2' or 'fc:input', got {spec!r}")
        path, _, suffix = spec.partition(":")
        kind, dot, index = (suffix or "output").partition(".")
        if kind not in ("output", "input") or (dot and not index.isdigit()):
            raise TapError(
                f"tap {spec!r}: the suffix must be ':input' or ':output', optionally with an "
                f"element index (':output.1'), not {suffix!r}"
            )
        return cls(path.strip(), kind, int(index) if dot else None)  # type: ignore[arg-type]

    def __str__(self) -> str:
        if self.index is not None:
            return f"{self.path}:{self.kind}.{self.index}"
        return self.path if self.kind == "output" else f"{self.path}:input"


def module_paths(model: nn.Module) -> list[str]:
    """Every dotted module path in ``model`` ('' is the model itself)."""
    return [name for name, _ in model.named_modules()]


def resolve(model: nn.Module, path: str, role: str = "model") -> nn.Module:
    """The submodule at ``path``, or a TapError listing the nearest valid paths."""
    if path == "":
        return model
    modules = dict(model.named_modules())
    if path in modules:
        return modules[path]
    valid = [p for p in modules if p]
    close = difflib.get_close_matches(path, valid, n=5, cutoff=0.4)
    if not close:  # fall back to paths sharing the first component
        head = path.split(".")[0]
        close = [p for p in valid if p.split(".")[0] == head][:5] or valid[:8]
    raise TapError(
        f"{role} {type(model).__name__} has no module {path!r}; nearest valid paths: "
        + ", ".join(repr(c) for c in close)
    )


def _first_tensor(value: Any) -> Tensor:
    if isinstance(value, Tensor):
        return value
    if isinstance(value, (tuple, list)) and value and isinstance(value[0], Tensor):
        return value[0]
    if isinstance(value, Mapping):
        for v in value.values():
            if isinstance(v, Tensor):
                return v
    logits = getattr(value, "logits", None)
    if isinstance(logits, Tensor):
        return logits
    raise TapError(f"cannot find a tensor in a module's {type(value).__name__} value")


def _element(value: Any, tap: Tap) -> Tensor:
    """The tensor a tap captures from a module's output (or positional inputs)."""
    if tap.index is None:
        return _first_tensor(value)
    items = value if isinstance(value, (tuple, list)) else (value,)
    if tap.index < len(items) and isinstance(items[tap.index], Tensor):
        return items[tap.index]
    shown = ", ".join(
        f"Tensor{tuple(v.shape)}" if isinstance(v, Tensor) else type(v).__name__ for v in items
    )
    raise TapError(
        f"tap {str(tap)!r}: element {tap.index} of the module's {tap.kind} ({shown}) is not a "
        "tensor (Hugging Face attention weights exist only with attn_implementation 'eager')"
    )


def model_logits(output: Any) -> Tensor:
    """The logits in a model's output: a tensor, ``.logits``, or the first element."""
    return _first_tensor(output)


class FeatureTaps:
    """Forward hooks on a model that store tapped tensors in ``self.features``.

    Hooks stay registered (cheap when idle); ``clear()`` before each forward. A tapped
    tensor that a later in-place op modified (e.g. ``ReLU(inplace=True)``) is caught
    on access through its version counter, instead of silently using wrong values.
    """

    def __init__(self, model: nn.Module, taps: Iterable[str | Tap], role: str = "model") -> None:
        self.role = role
        self.taps: list[Tap] = list(dict.fromkeys(Tap.parse(t) for t in taps))
        self.features: dict[Tap, Tensor] = {}
        self._versions: dict[Tap, int] = {}
        self._handles: list[Any] = []
        for tap in self.taps:
            module = resolve(model, tap.path, role)
            clone_input = tap.kind == "input" and bool(getattr(module, "inplace", False))
            if tap.kind == "output":
                hook = module.register_forward_hook(self._make_output_hook(tap))
            else:
                hook = module.register_forward_pre_hook(self._make_input_hook(tap, clone_input))
            self._handles.append(hook)

    def _store(self, tap: Tap, t: Tensor) -> None:
        self.features[tap] = t
        # Inference tensors (the teacher under inference_mode) keep no version counter.
        self._versions[tap] = -1 if t.is_inference() else t._version

    def _make_output_hook(self, tap: Tap):  # noqa: ANN202
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            self._store(tap, _element(output, tap))

        return hook

    def _make_input_hook(self, tap: Tap, clone: bool):  # noqa: ANN202
        def hook(_module: nn.Module, inputs: Any) -> None:
            value = _element(inputs, tap)
            self._store(tap, value.clone() if clone else value)

        return hook

    def clear(self) -> None:
        self.features.clear()
        self._versions.clear()

    def get(self, tap: Tap) -> Tensor:
        if tap not in self.features:
            raise TapError(
                f"{self.role} tap {str(tap)!r} captured nothing: the module did not run "
                "in this forward pass"
            )
        t = self.features[tap]
        if self._versions[tap] >= 0 and t._version != self._versions[tap]:
            raise TapError(
                f"{self.role} tap {str(tap)!r} was modified in place after capture "
                "(an inplace op such as ReLU(inplace=True) follows it); tap the next "
                "module's output instead, or set inplace=False"
            )
        return t

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()


@torch.no_grad()
def probe_shapes(
    model: nn.Module, taps: Iterable[str | Tap], example: Tensor, role: str = "model"
) -> dict[Tap, torch.Size]:
    """Shapes of every tap (and of the output, under ``Tap('')``) from one dummy forward.

    The model runs in eval mode on ``example`` (any batch size >= 1) and is put back in
    the mode it was in.
    """
    taps = [Tap.parse(t) for t in taps]
    collector = FeatureTaps(model, taps, role)
    was_training = model.training
    model.eval()
    try:
        out = model_logits(model(example))
        shapes = {tap: collector.get(tap).shape for tap in collector.taps}
        shapes[Tap("")] = out.shape
    finally:
        collector.remove()
        model.train(was_training)
    return shapes
