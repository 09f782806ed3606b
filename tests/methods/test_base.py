"""The term interface: typed parameters from the generic argument, main_stage, bind_data."""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor

from kdlab.distiller import Distiller
from kdlab.methods import METHODS, StepContext, Term, TermParams, build_term, build_terms
from kdlab.models import create_model


class _ScaleParams(TermParams):
    scale: float = Field(2.0, gt=0)


class _Scaled(Term[_ScaleParams]):
    method = "_test_scaled"
    needs_teacher = False

    def forward(self, ctx: StepContext) -> Tensor:
        return self.params.scale * ctx.student.logits.pow(2).mean()


def test_the_generic_argument_is_the_params_model() -> None:
    assert METHODS.get("_test_scaled").Params is _ScaleParams
    term = build_term({"method": "_test_scaled", "scale": 3})
    assert isinstance(term.params, _ScaleParams) and term.params.scale == 3.0


def test_main_stage_follows_the_recipe_then_the_method() -> None:
    x = torch.randn(2, 1, 8, 8)
    student, teacher = create_model("cnn_tiny", 10, 1), create_model("cnn_small", 10, 1)
    fit = {"method": "fitnet", "student": ["stages.0"], "teacher": ["stages.0"]}
    terms = build_terms(
        [
            {"method": "ce", "main_stage": False},
            {"method": "kd"},
            fit,
            {**fit, "name": "f2", "main_stage": True},
        ]
    )
    assert [t.main_stage for t in terms] == [False, True, False, True]
    d = Distiller(student, teacher, terms, example_input=x)
    assert [t.term_name for t, _, _ in d.loss_plan()] == ["kd", "f2"]


def test_every_term_takes_bind_data() -> None:
    for name in ("ce", "kd", "crd"):
        spec = {"method": name}
        if name == "crd":
            spec.update(student=["fc:input"], teacher=["fc:input"])
        build_term(spec).bind_data(10, labels=torch.arange(10))
