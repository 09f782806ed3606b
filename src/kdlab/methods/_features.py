"""Shared pieces of the feature-map methods (FitNets, AT, NST, AB, FT, FSP).

Not a method: it registers nothing. ``FeatureParams`` holds the paired tap lists;
``probed_pairs`` returns each student/teacher tap pair with its probed shapes.

Map methods (``MapParams``) take ``(N, C, H, W)`` maps and 3-D taps. A 3-D tap is
ambiguous, so the term's ``layout`` says how to read it, never its sizes: ``ncl``
(default) is an ``(N, C, L)`` map from a Conv1d, ``nlc`` the ``(N, L, H)`` hidden states
of a transformer, moved to ``(N, H, L)`` first; ``{student: ncl, teacher: nlc}`` reads
each side its own way (a Conv1d student beside a transformer teacher). Either is then
viewed as an ``(N, C, 1, L)`` map, so the 2-D formulas and adapters run unchanged and
compute their 1-D forms: a sum over ``H*W`` positions is a sum over ``L``, a ``(1, k)`` conv is a
Conv1d of kernel ``k``, BatchNorm2d over ``(N, 1, L)`` is BatchNorm1d, pooling and
linear resampling act along ``L`` only.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

import torch
from pydantic import Field, field_validator
from torch import Tensor

from kdlab.config import Strict
from kdlab.errors import TapError
from kdlab.methods.base import Shapes, StepContext, Term, TermParams
from kdlab.taps import Tap

Layout = Literal["ncl", "nlc"]


class FeatureParams(TermParams):
    """Student and teacher taps, matched pairwise (a single string is one tap)."""

    student: list[str] = Field(min_length=1, description="student taps, e.g. ['stages.1']")
    teacher: list[str] = Field(min_length=1, description="teacher taps, as many as student")

    @field_validator("student", "teacher", mode="before")
    @classmethod
    def _one_tap(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value


class SideLayouts(Strict):
    """How the student's and the teacher's 3-D taps are read, when they differ."""

    student: Layout = "ncl"
    teacher: Layout = "ncl"


class MapParams(FeatureParams):
    """Taps of a map method, and how its 3-D taps are read."""

    layout: Layout | SideLayouts = Field(
        "ncl",
        description="3-D taps: 'ncl' (N, C, L) maps of a Conv1d, or 'nlc' (N, L, H) hidden "
        "states of a transformer, transposed to (N, H, L); {student: ..., teacher: ...} "
        "when the two sides differ; 4-D and 2-D taps are not affected",
    )

    @field_validator("layout", mode="before")
    @classmethod
    def _one_layout_error(cls, value: Any) -> Any:
        # One message instead of one per branch of the union.
        valid = " or ".join(repr(v) for v in get_args(Layout))
        if isinstance(value, dict):
            for side in ("student", "teacher"):
                if side in value and value[side] not in get_args(Layout):
                    raise ValueError(f"{side} must be {valid}")
        elif not isinstance(value, SideLayouts) and value not in get_args(Layout):
            raise ValueError(f"must be {valid}, or {{student: ..., teacher: ...}}")
        return value

    def side_layouts(self) -> tuple[Layout, Layout]:
        """The student's and the teacher's layout."""
        if isinstance(self.layout, SideLayouts):
            return self.layout.student, self.layout.teacher
        return self.layout, self.layout


def probed_pairs(term: Term, shapes: Shapes) -> list[tuple[Tap, Tap, torch.Size, torch.Size]]:
    """``(student_tap, teacher_tap, student_shape, teacher_shape)`` per pair."""
    return [(s, t, shapes.student[s], shapes.teacher[t]) for s, t in term.paired_taps()]


def map_shape(shape: torch.Size, layout: Layout) -> torch.Size:
    """The shape :func:`as_map` gives a tensor of ``shape``."""
    if len(shape) != 3:
        return torch.Size(shape)
    n, a, b = shape
    c, length = (a, b) if layout == "ncl" else (b, a)
    return torch.Size((n, c, 1, length))


def as_map(x: Tensor, layout: Layout) -> Tensor:
    """A 3-D tap as an ``(N, C, 1, L)`` map (``nlc``: channels are the last dimension);
    other ranks unchanged."""
    if x.dim() != 3:
        return x
    if layout == "nlc":
        x = x.transpose(1, 2)
    return x.unsqueeze(2)


def map_pairs(
    term: Term, shapes: Shapes, vectors: bool = False
) -> list[tuple[Tap, Tap, torch.Size, torch.Size]]:
    """:func:`probed_pairs` with shapes as :func:`as_map` gives them, after a one-line
    TapError naming the term and pair unless both taps are maps of one rank (or, with
    ``vectors``, both ``(N, D)``)."""
    s_layout, t_layout = term.params.side_layouts()
    ranks = (2, 3, 4) if vectors else (3, 4)
    pairs = []
    for s, t, s_shape, t_shape in probed_pairs(term, shapes):
        if len(s_shape) != len(t_shape) or len(s_shape) not in ranks:
            valid = "two (N, C, H, W) maps, two 3-D taps ((N, C, L) with layout 'ncl', (N, L, H) "
            valid += "hidden states with layout 'nlc')"
            valid += ", or two (N, D) vectors" if vectors else ""
            raise TapError(
                f"term {term.term_name!r} ({term.method}): student tap {str(s)!r} gives "
                f"{tuple(s_shape)[1:]} and teacher tap {str(t)!r} gives {tuple(t_shape)[1:]} "
                f"per sample; valid: {valid}"
            )
        pairs.append((s, t, map_shape(s_shape, s_layout), map_shape(t_shape, t_layout)))
    return pairs


def pair_maps(term: Term, ctx: StepContext, s: Tap, t: Tap) -> tuple[Tensor, Tensor]:
    """The student's and teacher's tapped tensors of a pair, through :func:`as_map`."""
    s_layout, t_layout = term.params.side_layouts()
    return as_map(ctx.s(s), s_layout), as_map(ctx.t(t), t_layout)


def stage_name(term: Term, kind: str) -> str:
    """A pre-stage's name: ``kind``, prefixed by the term's name when it was renamed."""
    return kind if term.term_name == term.method else f"{term.term_name}_{kind}"
