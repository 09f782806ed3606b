from __future__ import annotations

import warnings

import pytest
import torch
from pydantic import Field
from torch import Tensor

from kdlab.config import load_config
from kdlab.distiller import Distiller, IdleTermWarning
from kdlab.engine.stages import resolve_stages
from kdlab.errors import ConfigError, ModelError
from kdlab.methods import METHODS, StepContext, Term, TermParams, build_terms
from kdlab.models import create_model
from kdlab.views import build_views


def pair() -> tuple[torch.nn.Module, torch.nn.Module]:
    return create_model("cnn_small", 10, 1), create_model("cnn_medium", 10, 1)


def test_weighted_losses_and_total() -> None:
    s, t = pair()
    terms = build_terms([{"method": "ce", "weight": 0.1}, {"method": "kd", "T": 2.0}])
    d = Distiller(s, t, terms, example_input=torch.randn(2, 1, 8, 8))
    x, y = torch.randn(6, 1, 8, 8), torch.randint(0, 10, (6,))
    out = d(x, y)
    s.eval()
    t.eval()
    d.train()  # Distiller.train keeps the teacher in eval
    assert not t.training and s.training
    zs, zt = s(x), t(x)
    ce = torch.nn.functional.cross_entropy(zs, y)
    kd = (
        torch.nn.functional.kl_div(
            torch.log_softmax(zs / 2, 1), torch.softmax(zt / 2, 1), reduction="batchmean"
        )
        * 4
    )
    assert set(out.losses) == {"ce", "kd"}
    # BN in train mode inside d(x): compare against the student in train mode instead
    s.train()
    zs = s(x)
    ce = torch.nn.functional.cross_entropy(zs, y)
    kd = (
        torch.nn.functional.kl_div(
            torch.log_softmax(zs / 2, 1), torch.softmax(zt / 2, 1), reduction="batchmean"
        )
        * 4
    )
    assert out.losses["ce"].item() == pytest.approx(0.1 * ce.item(), rel=1e-5)
    assert out.losses["kd"].item() == pytest.approx(0.9 * kd.item(), rel=1e-5)
    assert out.total.item() == pytest.approx(0.1 * ce.item() + 0.9 * kd.item(), rel=1e-5)


def test_teacher_frozen_outside_tree_and_gets_no_grad() -> None:
    s, t = pair()
    d = Distiller(s, t, build_terms([{"method": "kd"}]))
    names = [n for n, _ in d.named_parameters()]
    assert names and all(n.startswith("student.") for n in names)
    assert all(k.startswith("student.") for k in d.state_dict())
    out = d(torch.randn(4, 1, 8, 8), torch.randint(0, 10, (4,)))
    out.total.backward()
    assert all(p.grad is None and not p.requires_grad for p in t.parameters())
    assert any(p.grad is not None for p in s.parameters())
    assert not t.training


def test_class_count_mismatch_and_missing_teacher() -> None:
    s = create_model("cnn_small", 10, 1)
    t = create_model("cnn_medium", 7, 1)
    with pytest.raises(ModelError, match="same classes"):
        Distiller(s, t, build_terms([{"method": "kd"}]), example_input=torch.randn(2, 1, 8, 8))
    with pytest.raises(ModelError, match="needs a teacher"):
        Distiller(s, None, build_terms([{"method": "kd"}]))


class _RecordParams(TermParams):
    student: list[str] = Field(default_factory=lambda: ["stages.0"])
    teacher: list[str] = Field(default_factory=lambda: ["stages.1"])


class _Record(Term):
    """Test-only term recording what it sees."""

    method = "_test_record"
    Params = _RecordParams

    def setup(self, shapes) -> None:  # noqa: ANN001
        self.shapes = shapes

    def forward(self, ctx: StepContext) -> Tensor:
        self.seen = ctx
        return ctx.student.logits.sum() * 0


def test_taps_probe_views_and_shared_noise() -> None:
    s, t = pair()
    views = build_views({"noisy": {"type": "gaussian_noise", "sigma": 0.5}})
    term = build_terms(
        [{"method": "_test_record", "student_view": "noisy", "teacher_view": "noisy"}]
    )[0]
    d = Distiller(s, t, [term], views, example_input=torch.randn(2, 1, 8, 8))
    assert term.shapes.student[next(iter(term.student_taps()))] == torch.Size([2, 16, 8, 8])
    assert term.shapes.teacher[next(iter(term.teacher_taps()))] == torch.Size([2, 64, 4, 4])
    x = torch.randn(3, 1, 8, 8)
    d(x, torch.zeros(3, dtype=torch.long))
    ctx = term.seen
    assert torch.equal(ctx.student.input, ctx.teacher.input)  # the same noise sample
    assert not torch.equal(ctx.student.input, x)
    assert set(ctx.student.features) == set(term.student_taps())
    assert set(ctx.teacher.features) == set(term.teacher_taps())
    assert not ctx.teacher.features[next(iter(term.teacher_taps()))].requires_grad
    assert "_test_record" in METHODS


def test_loss_plan_validates_names() -> None:
    s, t = pair()
    d = Distiller(s, t, build_terms([{"method": "kd"}]))
    with pytest.raises(ConfigError, match="did you mean 'kd'"):
        d.loss_plan({"kdd": 1.0})
    with pytest.raises(ConfigError, match="no loss mode"):
        d.loss_plan({"kd.nope": 1.0})
    with pytest.raises(ConfigError, match="unknown view"):
        Distiller(s, t, build_terms([{"method": "kd", "student_view": "blurry"}]))


def test_duplicate_term_names_and_unknown_params() -> None:
    with pytest.raises(ConfigError, match="already exists"):
        build_terms([{"method": "kd"}, {"method": "kd"}])
    with pytest.raises(
        ConfigError, match=r"unknown key 'distill\.terms\.0 \(kd\)\.temperature'; valid: T,"
    ):
        build_terms([{"method": "kd", "temperature": 4}])
    assert [
        t.term_name for t in build_terms([{"method": "kd"}, {"method": "kd", "name": "kd2"}])
    ] == [
        "kd",
        "kd2",
    ]


def test_pre_stage_only_terms_are_named_when_a_default_forward_leaves_them_out() -> None:
    s, t = pair()
    spec = {"method": "fitnet", "student": ["stages.0"], "teacher": ["stages.1"]}
    d = Distiller(
        s, t, build_terms([{"method": "ce"}, spec]), example_input=torch.randn(2, 1, 8, 8)
    )
    x, y = torch.randn(4, 1, 8, 8), torch.randint(0, 10, (4,))
    with pytest.warns(IdleTermWarning, match=r"'fitnet' train only in a pre-stage .*'hint'"):
        out = d(x, y)
    assert set(out.losses) == {"ce"}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per Distiller; explicit losses never warn
        d(x, y)
        assert set(d(x, y, losses={"ce": 1.0, "fitnet": 2.0}).losses) == {"ce", "fitnet"}
        assert d.main_losses() == {"ce": 1.0}
        # The engine's main stage asks for main_losses() explicitly: no warning in a run.
        cfg = load_config(
            {"student": {"name": "cnn_small"}, "distill": {"terms": [{"method": "ce"}]}}
        )
        fresh = Distiller(
            s, t, build_terms([{"method": "ce"}, spec]), None, torch.zeros(2, 1, 8, 8)
        )
        main = resolve_stages(cfg, fresh)[-1]
        assert main.losses == {"ce": 1.0}
        fresh(x, y, losses=main.losses)
