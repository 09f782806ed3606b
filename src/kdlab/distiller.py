"""The Distiller: teacher and student forwards, taps, and a dict of weighted losses."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn

from kdlab.errors import ConfigError, KdlabError, ModelError, TapError, did_you_mean
from kdlab.inputs import (
    Inputs,
    call_model,
    describe,
    detach,
    float_inputs,
    head,
    map_inputs,
    named,
    requires_grad,
)
from kdlab.methods.base import Pass, Shapes, StepContext, Term
from kdlab.taps import FeatureTaps, Tap, model_logits
from kdlab.views import ViewFn, as_view, check_view, identity


class IdleTermWarning(UserWarning):
    """A term that only trains in a pre-stage was left out of a default forward."""


@dataclass
class DistillOutput:
    """The weighted losses by term name, their sum, and the student's default logits."""

    total: Tensor
    losses: dict[str, Tensor]
    logits: Tensor


class Distiller(nn.Module):
    """Runs the teacher (frozen, eval, ``inference_mode``) and the student once per view.

    Only the taps that some term asked for are captured. The teacher is kept outside
    the module tree, so ``state_dict()``, ``parameters()`` and DDP see the student and
    the terms' adapters only; ``to()`` moves the teacher too.

    A batch's input is one tensor or a dict of tensors, passed to both models as keyword
    arguments (:mod:`kdlab.inputs`); integer inputs keep their dtype. Views and input
    gradients (a term's ``input:``) touch floating-point inputs only.

    Args:
        student: the model being trained.
        teacher: the trained model, or None for label-only recipes.
        terms: the recipe's terms.
        views: named input views (``default`` is added); a plain ``Tensor -> Tensor``
            function applies to every floating-point input.
        example_input: a batch's input (any size) used to probe tap shapes so terms can
            build their adapters; required when a term has taps.
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module | None,
        terms: Sequence[Term],
        views: Mapping[str, ViewFn] | None = None,
        example_input: Inputs | None = None,
    ) -> None:
        super().__init__()
        self.student = student
        self._teacher = [teacher] if teacher is not None else []
        self.terms = nn.ModuleDict({t.term_name: t for t in terms})
        self.views: dict[str, ViewFn] = {
            "default": identity(),
            **{name: as_view(fn, name) for name, fn in (views or {}).items()},
        }
        for term in terms:
            check_view(term.params.student_view, self.views, f"term {term.term_name!r}")
            check_view(term.params.teacher_view, self.views, f"term {term.term_name!r}")
            if term.needs_teacher and teacher is None:
                raise ModelError(
                    f"term {term.term_name!r} (method {term.method!r}) needs a teacher; "
                    "set 'teacher:' in the recipe"
                )
            term.check_taps(student, "student")
            if teacher is not None:
                term.check_taps(teacher, "teacher")
        if teacher is not None:
            teacher.eval()
            for p in teacher.parameters():
                p.requires_grad_(False)
        self.student_taps = FeatureTaps(
            student, [t for term in terms for t in term.student_taps()], "student"
        )
        self.teacher_taps = (
            FeatureTaps(teacher, [t for term in terms for t in term.teacher_taps()], "teacher")
            if teacher is not None
            else None
        )
        self._idle_warned = False
        self._check_logits_fit(example_input)
        if example_input is not None:
            self._check_input_grads(example_input)
            self._setup_terms(example_input)
        elif any(term.student_taps() or term.teacher_taps() for term in terms):
            raise ConfigError("terms with taps need example_input to probe their shapes")

    # ------------------------------------------------------------------ helpers
    @property
    def teacher(self) -> nn.Module | None:
        return self._teacher[0] if self._teacher else None

    def to(self, *args: Any, **kwargs: Any) -> Distiller:  # type: ignore[override]
        super().to(*args, **kwargs)
        if self.teacher is not None:
            self.teacher.to(*args, **kwargs)
        return self

    def train(self, mode: bool = True) -> Distiller:
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()  # frozen: BN statistics and dropout stay in eval
        return self

    def _check_logits_fit(self, example: Inputs | None) -> None:
        # One small forward now: a model whose logits cannot be found (or do not fit the
        # teacher's) fails here, naming its outputs, not at the first training step.
        if example is None:
            return
        example = head(example, 2)
        with torch.no_grad():
            s = model_logits(_eval_forward(self.student, example), where="the student")
            if self.teacher is None:
                return
            t = model_logits(_eval_forward(self.teacher, example), where="the teacher")
        if s.shape[1:] != t.shape[1:]:
            raise ModelError(
                f"student outputs {tuple(s.shape[1:])} but teacher outputs "
                f"{tuple(t.shape[1:])}: they must predict the same classes"
            )

    def _check_input_grads(self, example: Inputs) -> None:
        # A term differentiating an integer input (token ids) fails here, naming itself.
        for term in self.terms.values():
            if term.student_input_grad:
                self._grad_keys(term, self.views[term.params.student_view](head(example, 2)))
            if term.teacher_input_grad:
                self._grad_keys(term, self.views[term.params.teacher_view](head(example, 2)))

    @staticmethod
    def _grad_keys(term: Term, x: Inputs) -> list[str | None]:
        """The inputs a term takes gradients with respect to (its ``input:``, else every
        floating-point input)."""
        declared = term.params.get("input")
        who = f"term {term.term_name!r} (method {term.method!r}) differentiates its input and"
        return float_inputs(x, None if declared is None else [declared], who)

    @torch.no_grad()
    def _setup_terms(self, example: Inputs) -> None:
        example = head(example, 2)
        s_shapes: dict[str, dict[Tap, torch.Size]] = {}
        t_shapes: dict[str, dict[Tap, torch.Size]] = {}
        for term in self.terms.values():
            sv, tv = term.params.student_view, term.params.teacher_view
            if sv not in s_shapes:
                s_shapes[sv] = self._probe(self.student, self.student_taps, self.views[sv](example))
            if self.teacher is not None and tv not in t_shapes:
                assert self.teacher_taps is not None
                t_shapes[tv] = self._probe(self.teacher, self.teacher_taps, self.views[tv](example))
            shapes = Shapes(student=s_shapes[sv], teacher=t_shapes.get(tv, {}))
            try:
                term.setup(shapes)
            except (RuntimeError, ValueError, IndexError) as err:
                if isinstance(err, KdlabError):
                    raise
                # Adapters are sized from the recipe's taps: a tap of the wrong rank or
                # size for this method is a recipe mistake, not a kdlab bug.
                raise TapError(
                    f"term {term.term_name!r} (method {term.method!r}) cannot build its "
                    f"adapters for these taps: {err}; student shapes "
                    f"{ {str(k): tuple(v) for k, v in shapes.student.items()} }, teacher shapes "
                    f"{ {str(k): tuple(v) for k, v in shapes.teacher.items()} }"
                ) from err

    @staticmethod
    def _probe(model: nn.Module, taps: FeatureTaps, x: Inputs) -> dict[Tap, torch.Size]:
        taps.clear()
        out = model_logits(_eval_forward(model, x), where=f"the {taps.role}")
        shapes = {tap: taps.get(tap).shape for tap in taps.taps}
        shapes[Tap("")] = out.shape
        taps.clear()
        return shapes

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        inputs: Inputs,
        targets: Tensor,
        indices: Tensor | None = None,
        losses: Mapping[str, float] | None = None,
        epoch: int = 0,
        iteration: int = 0,
        progress: float | None = None,
    ) -> DistillOutput:
        """Weighted losses for one batch.

        Args:
            losses: which losses to compute, ``{term or term.mode: weight}``; default is
                every main-stage term with its own weight (:meth:`main_losses`). Terms
                that only drive a pre-stage (fitnet's hints, AB's and FSP's
                initialisation, FT's paraphraser) are then left out, and the first such
                call warns (:class:`IdleTermWarning`) naming them and their stages.
            progress: the share of the running stage done before this step, in [0, 1),
                for terms whose schedule scales with the training length.
        """
        if losses is None and not self._idle_warned:
            self._warn_idle_terms()
        plan = self.loss_plan(losses)
        view_cache: dict[str, Inputs] = {}

        def view(name: str) -> Inputs:
            if name not in view_cache:
                view_cache[name] = inputs if name == "default" else self.views[name](inputs)
            return view_cache[name]

        student_passes: dict[str, Pass] = {}
        teacher_passes: dict[str, Pass] = {}
        terms = [t for t, _, _ in plan]
        for term in terms:
            sv, tv = term.params.student_view, term.params.teacher_view
            if sv not in student_passes:
                grad = [t for t in terms if t.student_input_grad and t.params.student_view == sv]
                student_passes[sv] = self._student_pass(view(sv), grad)
            if term.needs_teacher and tv not in teacher_passes:
                grad = [t for t in terms if t.teacher_input_grad and t.params.teacher_view == tv]
                cached = indices if tv == "default" else None  # only the batch itself
                teacher_passes[tv] = self._teacher_pass(view(tv), grad, cached)
        if not student_passes:  # logits for train accuracy
            student_passes["default"] = self._student_pass(inputs, [])

        make_ctx = partial(
            StepContext,
            targets=targets,
            indices=indices,
            epoch=epoch,
            iteration=iteration,
            progress=progress,
        )
        # The forwards ran under the caller's autocast (bf16/fp16); the losses must not: a
        # bf16 log-softmax of near-uniform logits rounds KD to 0.0. Terms get float32
        # logits and features (one cast per tensor) and run with autocast off.
        amp = _autocast_device(next(iter(student_passes.values())).logits)
        if amp is not None:
            student_passes, teacher_passes = _float32(student_passes), _float32(teacher_passes)
        with torch.autocast(amp, enabled=False) if amp else contextlib.nullcontext():
            out = self._term_losses(plan, student_passes, teacher_passes, make_ctx)
        # Train accuracy uses the default view's logits when some term computed them,
        # else the first view's: an extra train-mode forward on the clean batch would
        # move BatchNorm running statistics towards inputs the student never trains on.
        shown = student_passes.get("default") or next(iter(student_passes.values()))
        total = torch.stack(list(out.values())).sum() if out else shown.logits.new_zeros(())
        return DistillOutput(total=total, losses=out, logits=shown.logits)

    @staticmethod
    def _term_losses(
        plan: Sequence[tuple[Term, str | None, float]],
        student_passes: Mapping[str, Pass],
        teacher_passes: Mapping[str, Pass],
        make_ctx: Callable[..., StepContext],
    ) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        for term, mode, weight in plan:
            t_pass = teacher_passes.get(term.params.teacher_view) if term.needs_teacher else None
            if t_pass is not None and requires_grad(t_pass.input) and not term.teacher_input_grad:
                # The teacher ran with a graph for a Jacobian term; other terms must see it
                # as a constant, or the total's backward would run through the teacher.
                t_pass = _detached(t_pass)
            ctx = make_ctx(student=student_passes[term.params.student_view], teacher=t_pass)
            key = term.term_name if mode is None else f"{term.term_name}.{mode}"
            out[key] = weight * term.loss(ctx, mode)
        return out

    def main_losses(self) -> dict[str, float]:
        """``{term: weight}`` of the main stage: what ``losses=None`` computes."""
        return {t.term_name: t.weight for t in self.terms.values() if t.in_main_stage}

    def _warn_idle_terms(self) -> None:
        # Once per Distiller: a Python caller of distiller(x, y) would otherwise never
        # learn that e.g. fitnet's hint loss (a pre-stage only term) was not computed.
        self._idle_warned = True
        idle = [t for t in self.terms.values() if not t.in_main_stage]
        if not idle:
            return
        stages = {s.name: dict(s.losses) for t in idle for s in t.pre_stages()}
        names = ", ".join(repr(t.term_name) for t in idle)
        warnings.warn(
            f"Distiller: term(s) {names} train only in a pre-stage ({stages or 'none declared'}"
            "), so a forward without losses= leaves them out; pass losses={...} to compute "
            "them (e.g. a pre-stage's losses), set main_stage: true in the term to add it to "
            "the main stage, or train with kdlab.engine.train, which runs the stages",
            IdleTermWarning,
            stacklevel=3,
        )

    def loss_plan(
        self, losses: Mapping[str, float] | None = None
    ) -> list[tuple[Term, str | None, float]]:
        """``(term, mode, weight)`` for each loss to compute; validates names."""
        if losses is None:
            return [(t, None, t.weight) for t in self.terms.values() if t.main_stage]
        plan = []
        for key, weight in losses.items():
            name, _, mode = key.partition(".")
            if name not in self.terms:
                raise ConfigError(f"unknown loss {key!r}; {did_you_mean(name, self.terms)}")
            term = self.terms[name]
            if mode and not term.has_mode(mode):
                raise ConfigError(f"term {name!r} ({term.method}) has no loss mode {mode!r}")
            plan.append((term, mode or None, float(weight)))
        return plan

    def _with_input_grad(self, x: Inputs, terms: Sequence[Term]) -> Inputs:
        keys = list(dict.fromkeys(k for term in terms for k in self._grad_keys(term, x)))
        return map_inputs(x, lambda t: t.detach().requires_grad_(True), keys)

    def _student_pass(self, x: Inputs, grad_terms: Sequence[Term]) -> Pass:
        if grad_terms:
            x = self._with_input_grad(x, grad_terms)
        self.student_taps.clear()
        logits = model_logits(call_model(self.student, x), where="the student")
        feats = {tap: self.student_taps.get(tap) for tap in self.student_taps.taps}
        return Pass(input=x, logits=logits, features=feats)

    def enable_teacher_cache(self, num_samples: int) -> None:
        """Keep the teacher's logits and tapped features per training sample.

        Exact only when the teacher sees the same input for a sample every epoch (no
        augmentation; views other than ``default`` are never cached). The cache is not
        part of the state dict: a resumed run recomputes it.
        """
        self._teacher_cache = TeacherCache(num_samples)

    def _teacher_pass(
        self, x: Inputs, grad_terms: Sequence[Term], indices: Tensor | None = None
    ) -> Pass:
        teacher, taps = self.teacher, self.teacher_taps
        assert teacher is not None and taps is not None
        cache = getattr(self, "_teacher_cache", None)
        if cache is not None and indices is not None and not grad_terms:
            hit = cache.get(indices, x)
            if hit is not None:
                return hit
        taps.clear()
        if grad_terms:  # Jacobian terms differentiate the teacher w.r.t. its input
            x = self._with_input_grad(x, grad_terms)
            with torch.enable_grad():
                logits = model_logits(call_model(teacher, x), where="the teacher")
            feats = {tap: taps.get(tap) for tap in taps.taps}
            return Pass(input=x, logits=logits, features=feats)
        # inference_mode skips autograd's bookkeeping entirely (resnet56 at batch 64 on
        # this CPU: ~5% faster than no_grad). Inference tensors cannot be saved for
        # backward, so the outputs a loss uses are cloned out of the mode: the logits
        # and the tapped features only, small next to the forward itself.
        with torch.inference_mode():
            logits = model_logits(call_model(teacher, x), where="the teacher")
            feats = {tap: taps.get(tap) for tap in taps.taps}
        logits = logits.clone()
        feats = {k: v.clone() for k, v in feats.items()}
        if cache is not None and indices is not None:
            cache.put(indices, logits, feats)
        return Pass(input=x, logits=logits, features=feats)


class TeacherCache:
    """Teacher logits and features by training-sample index, filled as batches come."""

    def __init__(self, num_samples: int) -> None:
        self.num_samples = num_samples
        self.filled: Tensor | None = None
        self.logits: Tensor | None = None
        self.features: dict[Tap, Tensor] = {}

    def get(self, indices: Tensor, x: Inputs) -> Pass | None:
        if self.filled is None or self.logits is None:
            return None
        idx = indices.to(self.filled.device)
        if not bool(self.filled[idx].all()):
            return None
        return Pass(
            input=x,
            logits=self.logits[idx],
            features={k: v[idx] for k, v in self.features.items()},
        )

    def put(self, indices: Tensor, logits: Tensor, features: dict[Tap, Tensor]) -> None:
        n, dev = self.num_samples, logits.device
        if self.filled is None or self.logits is None:
            self.filled = torch.zeros(n, dtype=torch.bool, device=dev)
            self.logits = logits.new_empty((n, *logits.shape[1:]))
            self.features = {k: v.new_empty((n, *v.shape[1:])) for k, v in features.items()}
        idx = indices.to(dev)
        self.logits[idx] = logits.to(self.logits.dtype)
        for k, v in features.items():
            self.features[k][idx] = v.to(self.features[k].dtype)
        self.filled[idx] = True


def _autocast_device(t: Tensor) -> str | None:
    """The device type of ``t`` when autocast is on for it, else None."""
    kind = t.device.type
    try:
        on = torch.is_autocast_enabled(kind)
    except TypeError:  # torch < 2.4: no device argument
        on = torch.is_autocast_cpu_enabled() if kind == "cpu" else torch.is_autocast_enabled()
    return kind if on else None


def _float32(passes: Mapping[str, Pass]) -> dict[str, Pass]:
    """Passes with bf16/fp16 logits and features cast to float32 (fp32 and integer ones
    are kept, not copied); the input stays, as Jacobian terms differentiate it."""

    def up(t: Tensor) -> Tensor:
        return t.float() if t.is_floating_point() and t.element_size() < 4 else t

    return {
        k: Pass(p.input, up(p.logits), {f: up(v) for f, v in p.features.items()})
        for k, p in passes.items()
    }


def _detached(p: Pass) -> Pass:
    return Pass(
        input=detach(p.input),
        logits=p.logits.detach(),
        features={k: v.detach() for k, v in p.features.items()},
    )


def _eval_forward(model: nn.Module, x: Inputs) -> Any:
    was_training = model.training
    model.eval()
    try:
        return call_model(model, x)
    except (IndexError, RuntimeError) as err:
        if "index out of range" not in str(err) or all(
            t.is_floating_point() for t in named(x).values()
        ):
            raise
        # An embedding lookup past the table: the data's ids do not fit this model.
        raise ModelError(
            f"{type(model).__name__} cannot take this batch ({describe(x)}): "
            f"{str(err).splitlines()[0]}; are the token ids within the model's vocabulary "
            "(its vocab_size), and the sequence within max_position_embeddings?"
        ) from err
    finally:
        model.train(was_training)
