"""Taps: capture any module's output or input by dotted path, without editing models.

A tap string is ``"layer2.1.bn2"`` (the module's output) or ``"layer2.1.relu:input"``
(its first positional input, e.g. a pre-activation). The empty path ``""`` is the
model itself, so ``":output"`` is its output and ``"fc:input"`` the penultimate
features of most classifiers. A module that returns a tuple gives its first tensor;
``":output.K"`` (or ``":input.K"``) picks element K instead, e.g. the attention
probabilities of a Hugging Face self-attention module,
``"bert.encoder.layer.0.attention.self:output.1"``. :func:`model_logits` and
:func:`select_output` say which part of a model's output is the logits.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from kdlab.errors import ModelError, TapError

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
    """A tapped module's tensor: the value itself, or the first tensor of a tuple, list or
    dict (an LSTM's output sequence, a transformer layer's hidden states)."""
    if isinstance(value, Tensor):
        return value
    if isinstance(value, (tuple, list)) and value and isinstance(value[0], Tensor):
        return value[0]
    if isinstance(value, Mapping):
        for v in value.values():
            if isinstance(v, Tensor):
                return v
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


OutputChoice = int | str | None


def _entries(output: Any) -> list[tuple[str, Any]]:
    """``(label, value)`` for each part of a structured model output, for choosing/naming."""
    if isinstance(output, Mapping):  # also Hugging Face's ModelOutput (an OrderedDict)
        return [(repr(k), v) for k, v in output.items()]
    if isinstance(output, (tuple, list)):
        return [(f"[{i}]", v) for i, v in enumerate(output)]
    return []


def describe_output(output: Any) -> str:
    """``"a tuple: [0] tensor (2, 64), [1] tensor (2, 10)"``: what a model returned."""
    if isinstance(output, Tensor):
        return f"a tensor {tuple(output.shape)}"
    parts = []
    for label, v in _entries(output):
        shown = f"tensor {tuple(v.shape)}" if isinstance(v, Tensor) else type(v).__name__
        parts.append(f"{label} {shown}")
    return f"a {type(output).__name__}" + (": " + ", ".join(parts) if parts else "")


def model_logits(output: Any, choice: OutputChoice = None, where: str = "the model") -> Tensor:
    """The logits in a model's output; never a guess.

    Without ``choice``: a tensor is the logits; else ``.logits`` (Hugging Face's
    ``ModelOutput``) or key ``"logits"``, found by name; else the only tensor of a tuple,
    list or dict. Several tensors and no name is a ModelError listing them (taking the
    first would train on a feature tensor returned before the logits). ``choice`` is an
    index (a tuple, list, or a dict's values in order) or a key / attribute name.
    """
    if choice is None or choice == "logits":
        if isinstance(output, Tensor):
            return output
        named = output.get("logits") if isinstance(output, Mapping) else None
        named = named if named is not None else getattr(output, "logits", None)
        if isinstance(named, Tensor):
            return named
        if choice is None:
            tensors = [v for _, v in _entries(output) if isinstance(v, Tensor)]
            if len(tensors) == 1:
                return tensors[0]
            raise ModelError(
                f"{where} returns {describe_output(output)}; "
                + ("which one is the logits? " if tensors else "none of it is a tensor; ")
                + "set its 'output:' in the recipe (student.output / teacher.output: an "
                "index or key), or call kdlab.select_output(model, choice) in Python"
            )
    picked: Any = None
    found = False
    if isinstance(choice, int) and not isinstance(choice, bool):
        values = [v for _, v in _entries(output)]
        found = -len(values) <= choice < len(values)
        picked = values[choice] if found else None
    elif isinstance(choice, str):
        if isinstance(output, Mapping):
            found, picked = choice in output, output.get(choice)
        else:
            found, picked = hasattr(output, choice), getattr(output, choice, None)
    if not isinstance(picked, Tensor):
        what = "is not a tensor" if found else "does not exist"
        raise ModelError(
            f"{where}: output {choice!r} {what}; the model returns {describe_output(output)}"
        )
    return picked


class _LogitsSelector:
    """A forward hook that makes a model return its logits (a module-level class, so a
    model holding it can still be deep-copied or pickled)."""

    def __init__(self, choice: OutputChoice, num_classes: int | None, where: str) -> None:
        self.choice, self.num_classes, self.where = choice, num_classes, where

    def __call__(self, _module: nn.Module, _inputs: Any, output: Any) -> Tensor | None:
        if isinstance(output, Tensor) and self.choice in (None, "logits"):
            return None  # a plain tensor is the logits: nothing chosen, nothing to check
        logits = model_logits(output, self.choice, self.where)
        n = self.num_classes
        if n is not None and (logits.dim() != 2 or logits.shape[1] != n):
            # Only for outputs with parts: a wrong pick trains on features silently.
            chosen = "output " + repr(self.choice) if self.choice is not None else "the logits"
            raise ModelError(
                f"{self.where}: {chosen} has shape {tuple(logits.shape)}, but the data has "
                f"{n} classes (expected (N, {n})); the model returns "
                f"{describe_output(output)}: choose another 'output:'"
            )
        return logits


def select_output(
    model: nn.Module,
    choice: OutputChoice = None,
    num_classes: int | None = None,
    where: str | None = None,
) -> nn.Module:
    """Make ``model(x)`` return its logits, chosen as :func:`model_logits` does.

    A forward hook (the model's code is not edited; its state dict is unchanged) picks
    the logits out of a tuple, dict or ``ModelOutput`` and, when the output had parts,
    checks their shape is ``(N, num_classes)``. A plain tensor output passes untouched.
    Calling it again replaces the previous choice. Returns ``model``.
    """
    # Found by type rather than by a stored handle, which a deep copy would detach.
    for key in [k for k, h in model._forward_hooks.items() if isinstance(h, _LogitsSelector)]:
        del model._forward_hooks[key]
        for extra in ("_forward_hooks_with_kwargs", "_forward_hooks_always_called"):
            getattr(model, extra, {}).pop(key, None)
    where = where or f"model {type(model).__name__}"
    model.register_forward_hook(_LogitsSelector(choice, num_classes, where))
    return model


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
