"""The term: one weighted loss of a recipe, with its taps, views, adapters and stages."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, TypeVar, get_args, get_origin

import torch
from torch import Tensor, nn

from kdlab.config import StageConfig, TermParams, check_term_names, term_params
from kdlab.errors import KdlabError, TapError
from kdlab.registry import Registry
from kdlab.taps import Tap, resolve

# Pre-stages (FitNets' hints, AB's and FSP's initialisation, FT's paraphraser) default to
# this share of the main stage: RepDistiller runs 30 initialisation epochs before 240
# main ones. A fixed count would dominate short schedules (30 epochs before 15).
PRE_STAGE_FRACTION = 0.125


def pre_stage_length(epochs: int | None) -> dict[str, Any]:
    """A pre-stage's length for :class:`StageConfig`: ``epochs`` when the recipe fixes
    them, else :data:`PRE_STAGE_FRACTION` of the main stage."""
    return {"epochs": epochs} if epochs is not None else {"fraction": PRE_STAGE_FRACTION}


@dataclass
class Pass:
    """One model's forward on one input view: the input, logits, tapped features."""

    input: Tensor
    logits: Tensor
    features: dict[Tap, Tensor] = field(default_factory=dict)


@dataclass
class StepContext:
    """What a term sees: the student's and teacher's passes on its views, and the batch."""

    student: Pass
    teacher: Pass | None
    targets: Tensor
    indices: Tensor | None = None
    epoch: int = 0
    iteration: int = 0
    # the share of the running stage done before this step, in [0, 1) (None: the caller
    # did not say), for schedules that scale with training, such as DKD's warm-up
    progress: float | None = None

    def s(self, tap: Tap | str) -> Tensor:
        return self.student.features[Tap.parse(tap)]

    def t(self, tap: Tap | str) -> Tensor:
        assert self.teacher is not None
        return self.teacher.features[Tap.parse(tap)]


@dataclass
class Shapes:
    """Probed shapes of a term's taps (batch dimension included) and of the logits."""

    student: dict[Tap, torch.Size]
    teacher: dict[Tap, torch.Size]

    @property
    def num_classes(self) -> int:
        return int(self.student[Tap("")][-1])


METHODS: Registry[type[Term]] = Registry("method")
P = TypeVar("P", bound=TermParams)


class Term(nn.Module, Generic[P]):
    """Base class of every method: ``class KD(Term[KDParams])`` with ``method`` and
    ``forward``. The generic argument is the method's parameter model (its recipe
    keys, validated at load): it becomes ``Params`` and the type of ``self.params``, so
    a method never re-annotates it.

    Class attributes a method may set:
    - ``default_weight``: the weight used when the recipe gives none.
    - ``needs_teacher``: False for label-only losses (``ce``).
    - ``student_input_grad`` / ``teacher_input_grad``: the term differentiates the
      model output with respect to its input (Jacobian matching).
    - ``in_main_stage``: False for losses that only drive a pre-stage by default (the
      recipe's ``main_stage`` key overrides it: see :attr:`Term.main_stage`).
    - ``frozen_in_main``: names of the term's submodules that stay frozen in the main
      stage (e.g. FT's paraphraser, trained in its own pre-stage).
    """

    method: ClassVar[str] = ""
    Params: ClassVar[type[TermParams]] = TermParams
    default_weight: ClassVar[float] = 1.0
    needs_teacher: ClassVar[bool] = True
    student_input_grad: ClassVar[bool] = False
    teacher_input_grad: ClassVar[bool] = False
    in_main_stage: ClassVar[bool] = True
    frozen_in_main: ClassVar[tuple[str, ...]] = ()

    params: P

    def __init__(self, params: P) -> None:
        super().__init__()
        self.params = params
        self.term_name = params.name or self.method
        self.weight = float(self.default_weight if params.weight is None else params.weight)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for base in getattr(cls, "__orig_bases__", ()):
            origin, args = get_origin(base), get_args(base)
            if isinstance(origin, type) and issubclass(origin, Term) and args:
                if "Params" not in cls.__dict__ and isinstance(args[0], type):
                    cls.Params = args[0]
        if cls.method:
            METHODS.add(cls.method, cls)

    @property
    def main_stage(self) -> bool:
        """Whether the loss is part of the main stage: the recipe's ``main_stage``, else
        the method's ``in_main_stage``."""
        chosen = self.params.main_stage
        return self.in_main_stage if chosen is None else chosen

    def bind_data(self, num_samples: int, labels: Tensor | None = None) -> None:
        """Called by the engine with the training set's size and labels (by sample
        index) before training; terms that index the training set (CRD's memory bank)
        use it. Default: nothing."""

    # --- what the Distiller asks of a term -------------------------------------
    def student_taps(self) -> Sequence[Tap]:
        return [Tap.parse(t) for t in getattr(self.params, "student", None) or []]

    def teacher_taps(self) -> Sequence[Tap]:
        return [Tap.parse(t) for t in getattr(self.params, "teacher", None) or []]

    def check_taps(self, model: nn.Module, role: str) -> None:
        """A TapError naming this term unless each of its ``role`` (student or teacher)
        taps is a module of ``model``; for a tap the method chose by default (crd's
        ``fc:input``) it says so and how to set the term's taps."""
        taps = self.student_taps() if role == "student" else self.teacher_taps()
        for tap in taps:
            try:
                resolve(model, tap.path, role)
            except TapError as err:
                default = role not in self.params.model_fields_set
                how = f"{str(tap)!r} is {self.method}'s default {role} tap; " if default else ""
                raise TapError(
                    f"term {self.term_name!r} (method {self.method!r}): {err}; {how}set "
                    f"'{role}:' in the term to a module path of the {role} ('PATH:input' "
                    "taps that module's input)"
                ) from None

    def setup(self, shapes: Shapes) -> None:
        """Build adapters from probed shapes (called once, before training)."""

    def pre_stages(self) -> list[StageConfig]:
        """Stages the method's paper runs before the main training (default: none)."""
        return []

    def forward(self, ctx: StepContext) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def loss(self, ctx: StepContext, mode: str | None = None) -> Tensor:
        try:
            if mode is None:
                return self(ctx)
            return getattr(self, f"loss_{mode}")(ctx)
        except (RuntimeError, ValueError, IndexError) as err:
            if isinstance(err, KdlabError) or not _looks_like_shape_error(err):
                raise
            # Taps the recipe chose do not fit this method: say which term and shapes,
            # instead of a torch traceback from inside the formula.
            raise TapError(
                f"term {self.term_name!r} (method {self.method!r}) cannot use its inputs: "
                f"{str(err).splitlines()[0]}; {_describe_shapes(ctx)}"
            ) from err

    def has_mode(self, mode: str) -> bool:
        return callable(getattr(self, f"loss_{mode}", None))

    # --- helpers for subclasses ---------------------------------------------------
    def paired_taps(self) -> list[tuple[Tap, Tap]]:
        """Student/teacher taps pairwise; a clear error when the counts differ."""
        s, t = list(self.student_taps()), list(self.teacher_taps())
        if len(s) != len(t):
            raise TapError(
                f"term {self.term_name!r}: {len(s)} student taps but {len(t)} teacher taps; "
                "they are matched pairwise, so give the same number"
            )
        return list(zip(s, t))

    def extra_repr(self) -> str:
        return f"name={self.term_name!r}, weight={self.weight}"


_SHAPE_WORDS = ("size", "shape", "dimension", "mat1", "mat2", "broadcast", "out of range")


def _looks_like_shape_error(err: Exception) -> bool:
    text = str(err).lower()
    if "out of memory" in text:  # a resource problem, not the recipe's taps
        return False
    return any(word in text for word in _SHAPE_WORDS)


def _describe_shapes(ctx: StepContext) -> str:
    def fmt(p: Pass | None) -> str:
        if p is None:
            return "none"
        items = [f"logits {tuple(p.logits.shape)}"]
        items += [f"{str(t)!r} {tuple(v.shape)}" for t, v in p.features.items()]
        return ", ".join(items)

    return f"student taps: {fmt(ctx.student)}; teacher taps: {fmt(ctx.teacher)}"


def build_term(spec: Mapping[str, Any] | TermParams, where: str = "term") -> Term:
    """A Term from a recipe entry ``{method: kd, weight: 0.9, T: 4, ...}`` or its
    validated parameters."""
    params = term_params(spec, where)
    return METHODS.get(params.method)(params)


def build_terms(specs: Sequence[Mapping[str, Any] | TermParams]) -> list[Term]:
    """Terms from a recipe's list; duplicate names are an error."""
    terms = [build_term(s, where=f"distill.terms.{i}") for i, s in enumerate(specs)]
    check_term_names([t.term_name for t in terms])
    return terms
