"""The term: one weighted loss of a recipe, with its taps, views, adapters and stages."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from pydantic import Field, model_validator
from torch import Tensor, nn

from kdlab.config import OptimizerConfig, ScheduleConfig, Strict, validate
from kdlab.errors import ConfigError, KdlabError, TapError
from kdlab.registry import Registry
from kdlab.taps import Tap

DEFAULT_VIEW = "default"
# Pre-stages (FitNets' hints, AB's and FSP's initialisation, FT's paraphraser) default to
# this share of the main stage: RepDistiller runs 30 initialisation epochs before 240
# main ones. A fixed count would dominate short schedules (30 epochs before 15).
PRE_STAGE_FRACTION = 0.125


class TermParams(Strict):
    """Keys every term accepts; each method subclasses this with its own."""

    method: str
    name: str | None = Field(None, description="unique name of the term (default: the method)")
    weight: float | None = Field(None, ge=0.0, description="loss weight (default: the method's)")
    student_view: str = DEFAULT_VIEW
    teacher_view: str = DEFAULT_VIEW


class StageConfig(Strict):
    """A pre-stage: which losses train which modules, for how long, with what optimiser.

    ``losses`` maps a term name, or ``term.mode`` for a term's extra loss
    (``Term.loss_<mode>``), to its weight. ``train`` lists module paths inside the
    Distiller ('student', 'terms.ft.paraphraser', ...) whose parameters are trained;
    parameters that receive no gradient (e.g. student layers after a FitNets guided
    layer) are left untouched by the optimiser. The length is ``epochs``, or, without
    it, ``fraction`` of the main stage's ``train.epochs`` (rounded, at least 1), so a
    method's pre-stage keeps its share of a short or long schedule.
    """

    @model_validator(mode="after")
    def _one_length(self) -> StageConfig:
        if (self.epochs is None) == (self.fraction is None):
            raise ConfigError(
                f"stage {self.name!r}: give exactly one of 'epochs' and 'fraction' "
                f"(got epochs={self.epochs!r}, fraction={self.fraction!r})"
            )
        return self

    def resolved_epochs(self, main_epochs: int) -> int:
        """The stage's epochs for a main stage of ``main_epochs``."""
        if self.epochs is not None:
            return self.epochs
        assert self.fraction is not None
        return max(1, round(self.fraction * main_epochs))

    name: str
    epochs: int | None = Field(
        None, ge=0, description="epochs of the stage; None: 'fraction' of the main stage's"
    )
    fraction: float | None = Field(
        None, gt=0.0, le=1.0, description="length as a fraction of train.epochs (at least 1)"
    )
    losses: dict[str, float]
    train: list[str] = Field(default_factory=lambda: ["student"])
    optimizer: OptimizerConfig | None = None
    schedule: ScheduleConfig = ScheduleConfig(name="constant")



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


class Term(nn.Module):
    """Base class of every method. Subclasses set ``method``, ``Params`` and ``forward``.

    Class attributes a method may set:
    - ``default_weight``: the weight used when the recipe gives none.
    - ``needs_teacher``: False for label-only losses (``ce``).
    - ``student_input_grad`` / ``teacher_input_grad``: the term differentiates the
      model output with respect to its input (Jacobian matching).
    - ``in_main_stage``: False for losses that only drive a pre-stage.
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

    def __init__(self, params: TermParams) -> None:
        super().__init__()
        self.params = params
        self.term_name = params.name or self.method
        self.weight = float(self.default_weight if params.weight is None else params.weight)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.method:
            METHODS.add(cls.method, cls)

    # --- what the Distiller asks of a term -------------------------------------
    def student_taps(self) -> Sequence[Tap]:
        return [Tap.parse(t) for t in getattr(self.params, "student", None) or []]

    def teacher_taps(self) -> Sequence[Tap]:
        return [Tap.parse(t) for t in getattr(self.params, "teacher", None) or []]

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


def build_term(spec: Mapping[str, Any], where: str = "term") -> Term:
    """A Term from a recipe entry ``{method: kd, weight: 0.9, T: 4, ...}``."""
    if not isinstance(spec, Mapping) or "method" not in spec:
        raise ConfigError(f"{where} must be a mapping with a 'method' key, got {spec!r}")
    cls = METHODS.get(str(spec["method"]))
    params = validate(cls.Params, dict(spec), where=f"{where} ({spec['method']})")
    return cls(params)


def build_terms(specs: Sequence[Mapping[str, Any]]) -> list[Term]:
    """Terms from a recipe's list; duplicate names are an error."""
    terms = [build_term(s, where=f"distill.terms.{i}") for i, s in enumerate(specs)]
    seen: dict[str, int] = {}
    for i, term in enumerate(terms):
        if term.term_name in seen:
            raise ConfigError(
                f"distill.terms.{i}: a term named {term.term_name!r} already exists "
                f"(distill.terms.{seen[term.term_name]}); give one a distinct 'name'"
            )
        seen[term.term_name] = i
    return terms
