"""Shared pieces of the feature-map methods (FitNets, AT, NST, AB, FT, FSP).

Not a method: it registers nothing. ``FeatureParams`` holds the paired tap lists;
``probed_pairs`` returns each student/teacher tap pair with its probed shapes.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field, field_validator

from kdlab.errors import TapError
from kdlab.methods.base import Shapes, Term, TermParams
from kdlab.taps import Tap


class FeatureParams(TermParams):
    """Student and teacher taps, matched pairwise (a single string is one tap)."""

    student: list[str] = Field(min_length=1, description="student taps, e.g. ['stages.1']")
    teacher: list[str] = Field(min_length=1, description="teacher taps, as many as student")

    @field_validator("student", "teacher", mode="before")
    @classmethod
    def _one_tap(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value


def probed_pairs(term: Term, shapes: Shapes) -> list[tuple[Tap, Tap, torch.Size, torch.Size]]:
    """``(student_tap, teacher_tap, student_shape, teacher_shape)`` per pair."""
    return [(s, t, shapes.student[s], shapes.teacher[t]) for s, t in term.paired_taps()]


def require_maps(term: Term, s: Tap, t: Tap, s_shape: torch.Size, t_shape: torch.Size) -> None:
    """A TapError naming the taps unless both are (N, C, H, W) maps."""
    if len(s_shape) != 4 or len(t_shape) != 4:
        raise TapError(
            f"term {term.term_name!r} ({term.method}) needs (N, C, H, W) feature maps; "
            f"student tap {str(s)!r} gives {tuple(s_shape)[1:]} and teacher tap "
            f"{str(t)!r} gives {tuple(t_shape)[1:]}: tap convolutional layers"
        )


def stage_name(term: Term, kind: str) -> str:
    """A pre-stage's name: ``kind``, prefixed by the term's name when it was renamed."""
    return kind if term.term_name == term.method else f"{term.term_name}_{kind}"
