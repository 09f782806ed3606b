"""Feature-map methods on 3-D taps: (N, C, L) maps of a Conv1d, (N, L, H) hidden states.

Each method's loss on an (N, C, L) pair is checked against the existing 2-D path on the
same data reshaped to (N, C, 1, L) (same adapter weights), and against hand values where
the formula is short; the refusals name the term, the tap and its shape.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdlab.distiller import Distiller
from kdlab.errors import ConfigError, TapError
from kdlab.functional.features import attention_transfer, fsp_matrix, nst_mmd2
from kdlab.methods import build_terms
from kdlab.methods.base import Pass, Shapes, StepContext, Term
from kdlab.taps import Tap
from test_cnn1d import train_on_waves

N = 3
# student taps 'a', 'b'; teacher taps 'x', 'y' (FSP pairs consecutive taps)
S_SHAPES = {"a": (N, 4, 12), "b": (N, 6, 6)}
T_SHAPES = {"x": (N, 5, 8), "y": (N, 6, 6)}
SPECS = {
    "at": {"student": ["a", "b"], "teacher": ["x", "y"]},
    "nst": {"student": ["a", "b"], "teacher": ["x", "y"]},
    "fsp": {"student": ["a", "b"], "teacher": ["x", "y"], "adapter": True},
    "fitnet": {"student": ["a", "b"], "teacher": ["x", "y"], "main_stage": True},
    "fitnet_1x1": {"method": "fitnet", "student": ["a"], "teacher": ["x"], "regressor": 1},
    "ab": {"student": ["a", "b"], "teacher": ["x", "y"], "main_stage": True},
    "ft": {"student": ["a"], "teacher": ["x"]},
    "vid": {"student": ["a", "b"], "teacher": ["x", "y"]},
}


def _features(shapes: dict[str, tuple[int, ...]], seed: int) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(*s, generator=g) for k, s in shapes.items()}


def _term(key: str, **extra: object) -> Term:
    spec = {"method": key, **SPECS[key], **extra}
    (term,) = build_terms([spec])
    return term


def _setup(term: Term, s: dict[str, Tensor], t: dict[str, Tensor]) -> Term:
    term.setup(
        Shapes(
            student={Tap(k): v.shape for k, v in s.items()} | {Tap(""): torch.Size((N, 3))},
            teacher={Tap(k): v.shape for k, v in t.items()} | {Tap(""): torch.Size((N, 3))},
        )
    )
    return term


def _loss(term: Term, s: dict[str, Tensor], t: dict[str, Tensor]) -> Tensor:
    ctx = StepContext(
        student=Pass(torch.zeros(N), torch.zeros(N, 3), {Tap(k): v for k, v in s.items()}),
        teacher=Pass(torch.zeros(N), torch.zeros(N, 3), {Tap(k): v for k, v in t.items()}),
        targets=torch.zeros(N, dtype=torch.long),
    )
    return term.loss(ctx)


def _as_2d(feats: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k: v.unsqueeze(2) for k, v in feats.items()}


@pytest.mark.parametrize("key", list(SPECS))
def test_a_1d_pair_equals_the_2d_path_on_the_same_data(key: str) -> None:
    s, t = _features(S_SHAPES, 0), _features(T_SHAPES, 1)
    torch.manual_seed(0)
    one_d = _setup(_term(key), s, t)
    two_d = _setup(_term(key), _as_2d(s), _as_2d(t))
    two_d.load_state_dict(one_d.state_dict())  # the same adapters, built for (N, C, 1, L)
    one_d.eval(), two_d.eval()  # BN on running stats: the value, not the batch's
    got, want = _loss(one_d, s, t), _loss(two_d, _as_2d(s), _as_2d(t))
    assert got.item() > 0
    assert got.item() == pytest.approx(want.item(), rel=1e-6)


@pytest.mark.parametrize("key", list(SPECS))
def test_nlc_hidden_states_are_the_transposed_ncl_maps(key: str) -> None:
    s, t = _features(S_SHAPES, 2), _features(T_SHAPES, 3)
    nlc = lambda f: {k: v.transpose(1, 2).contiguous() for k, v in f.items()}  # noqa: E731
    torch.manual_seed(0)
    ncl_term = _setup(_term(key), s, t)
    nlc_term = _setup(_term(key, layout="nlc"), nlc(s), nlc(t))
    nlc_term.load_state_dict(ncl_term.state_dict())
    ncl_term.eval(), nlc_term.eval()
    got, want = _loss(nlc_term, nlc(s), nlc(t)).item(), _loss(ncl_term, s, t).item()
    assert got == pytest.approx(want, rel=1e-6)


def test_at_on_1d_maps_by_hand() -> None:
    # Attention over positions: Q = sum_c A_c^2 per position, L2-normalised; a longer map
    # pooled to the shorter (12 -> 8 positions: adaptive windows), distances summed, / 2.
    s, t = _features(S_SHAPES, 4), _features(T_SHAPES, 5)
    qa = F.adaptive_avg_pool1d(s["a"].pow(2).sum(1, keepdim=True), 8).squeeze(1)
    qx = t["x"].pow(2).sum(1)
    qb, qy = s["b"].pow(2).sum(1), t["y"].pow(2).sum(1)

    def dist(q1: Tensor, q2: Tensor) -> float:
        d = _unit(q1.double().numpy()) - _unit(q2.double().numpy())
        return float(np.mean(np.sum(d**2, axis=1)))

    want = 0.5 * (dist(qa, qx) + dist(qb, qy))
    assert _loss(_setup(_term("at"), s, t), s, t).item() == pytest.approx(want, rel=1e-5)
    # the functional form divides by the L positions
    assert attention_transfer(s["b"], t["y"]).item() == pytest.approx(dist(qb, qy) / 6, rel=1e-5)


def _unit(a: np.ndarray) -> np.ndarray:
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def test_fsp_and_nst_functional_on_1d_maps_by_hand() -> None:
    g = torch.Generator().manual_seed(6)
    f1, f2 = torch.randn(2, 3, 10, generator=g), torch.randn(2, 4, 5, generator=g)
    # FSP: the Gram over positions, the longer map (10) average-pooled to 5 (pairs)
    p1 = f1.double().numpy().reshape(2, 3, 5, 2).mean(-1)
    want = np.einsum("nil,njl->nij", p1, f2.double().numpy()) / 5
    np.testing.assert_allclose(fsp_matrix(f1, f2).double().numpy(), want, rtol=1e-5)
    # NST, linear kernel: each channel's L values normalised; MMD^2 = ||mean_t - mean_s||^2
    a, b = f2, torch.randn(2, 6, 5, generator=g)
    ma = _unit_rows(a.double().numpy()).mean(1)
    mb = _unit_rows(b.double().numpy()).mean(1)
    want_mmd = float(np.mean(np.sum((ma - mb) ** 2, axis=1)))
    assert nst_mmd2(a, b, kernel="linear").item() == pytest.approx(want_mmd, rel=1e-5)


def _unit_rows(a: np.ndarray) -> np.ndarray:
    return a / np.linalg.norm(a, axis=2, keepdims=True)


def test_fitnet_builds_a_1d_regressor() -> None:
    # the paper's 'valid' regressor on lengths 12 -> 8 is a Conv1d of kernel 12 - 8 + 1
    s, t = _features(S_SHAPES, 7), _features(T_SHAPES, 8)
    term = _setup(_term("fitnet", regressor_relu=False), s, t)
    conv = term.regressors[0].body[0]
    assert isinstance(conv, nn.Conv2d) and conv.kernel_size == (1, 5)
    out = term.regressors[0](s["a"].unsqueeze(2)).squeeze(2)
    want = F.conv1d(s["a"], conv.weight.squeeze(2), conv.bias)
    assert out.shape == (N, 5, 8)
    torch.testing.assert_close(out, want)


# ------------------------------------------------------------------ refusals


@pytest.mark.parametrize(
    ("s_shape", "t_shape", "shown"),
    [
        ((N, 8), (N, 8), r"'a' gives \(8,\) and teacher tap 'x' gives \(8,\)"),
        ((N, 2, 3, 4, 5), (N, 2, 3, 4, 5), r"gives \(2, 3, 4, 5\)"),
        ((N, 4, 12), (N, 4, 3, 4), r"'a' gives \(4, 12\) and teacher tap 'x' gives \(4, 3, 4\)"),
    ],
)
@pytest.mark.parametrize("method", ["at", "nst", "ft", "fitnet", "ab", "fsp"])
def test_taps_of_other_ranks_are_one_line_errors(
    method: str, s_shape: tuple[int, ...], t_shape: tuple[int, ...], shown: str
) -> None:
    if method in ("fitnet", "ab") and len(s_shape) == 2:
        return  # two (N, D) vectors are valid for these: a linear regressor / connector
    s_taps, t_taps = (["a", "b"], ["x", "y"]) if method == "fsp" else (["a"], ["x"])
    (term,) = build_terms([{"method": method, "student": s_taps, "teacher": t_taps}])
    shapes = Shapes(
        student={Tap(k): torch.Size(s_shape) for k in s_taps},
        teacher={Tap(k): torch.Size(t_shape) for k in t_taps},
    )
    with pytest.raises(TapError) as err:
        term.setup(shapes)
    msg = str(err.value)
    assert "\n" not in msg and re.search(shown, msg)
    assert msg.startswith(f"term {method!r} ({method}): student tap 'a' gives ")
    assert "valid: two (N, C, H, W) maps, two 3-D taps" in msg and "layout 'nlc'" in msg
    assert ("two (N, D) vectors" in msg) == (method in ("fitnet", "ab"))


def test_fsp_refuses_a_1d_and_a_2d_map_in_one_term() -> None:
    (term,) = build_terms([{"method": "fsp", "student": ["a", "b"], "teacher": ["x", "y"]}])
    shapes = Shapes(
        student={Tap("a"): torch.Size((N, 4, 12)), Tap("b"): torch.Size((N, 4, 3, 4))},
        teacher={Tap("x"): torch.Size((N, 4, 12)), Tap("y"): torch.Size((N, 4, 3, 4))},
    )
    shown = r"^term 'fsp' \(fsp\): taps of one rank .*student 'b' \(4, 3, 4\)"
    with pytest.raises(TapError, match=shown):
        term.setup(shapes)


def test_vid_refuses_5d_taps_naming_them_and_keeps_vectors() -> None:
    (term,) = build_terms([{"method": "vid", "student": "a", "teacher": "x"}])
    five = Shapes(
        student={Tap("a"): torch.Size((N, 2, 3, 4, 5))}, teacher={Tap("x"): torch.Size((N, 4))}
    )
    with pytest.raises(TapError) as err:
        term.setup(five)
    msg = str(err.value)
    assert msg.startswith("term 'vid' (vid): student tap 'a' gives (2, 3, 4, 5)")
    assert "\n" not in msg
    assert "(N, D) vectors or 3-D taps" in msg
    # a vector and a 1-D map pair: the vector is a (D, 1, 1) map, the map pooled to it
    (term,) = build_terms([{"method": "vid", "student": "a", "teacher": "x"}])
    s, t = {"a": torch.randn(N, 4, 12)}, {"x": torch.randn(N, 5)}
    assert _loss(_setup(term, s, t), s, t).item() > 0


def test_an_unknown_layout_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="layout"):
        build_terms([{"method": "at", "student": "a", "teacher": "x", "layout": "nhwc"}])


class _NoFc(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body, self.classifier = nn.Linear(4, 8), nn.Linear(8, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.body(x))


def test_crd_default_tap_on_a_model_without_fc() -> None:
    terms = build_terms([{"method": "crd", "num_data": 10}])
    with pytest.raises(TapError) as err:
        Distiller(_NoFc(), _NoFc(), terms, example_input=torch.randn(2, 4))
    msg = str(err.value)
    assert msg.startswith("term 'crd' (method 'crd'): student _NoFc has no module 'fc'")
    assert "'fc:input' is crd's default student tap; set 'student:' in the term" in msg
    # with the taps set, the same pair builds
    terms = build_terms(
        [
            {
                "method": "crd",
                "num_data": 10,
                "student": ["classifier:input"],
                "teacher": ["classifier:input"],
            }
        ]
    )
    Distiller(_NoFc(), _NoFc(), terms, example_input=torch.randn(2, 4))


# ------------------------------------------------------------------ from the CLI


def test_a_1d_pair_trains_at_and_fitnet_from_the_cli(tmp_path: Path) -> None:
    terms = [
        "{method: ce}",
        "{method: at, student: [stages.0, stages.1], teacher: [stages.0, stages.1]}",
        "{method: fitnet, student: stages.0, teacher: stages.1, hint_epochs: 1}",
    ]
    rows = train_on_waves(tmp_path, terms)
    hint = [r for r in rows if r["stage"] == "hint"]
    main = [r for r in rows if r["stage"] == "main"]
    assert len(hint) == 1 and len(main) == 1
    # the hint stage ran the 1-D regressor (8 -> 32 channels, lengths 32 -> 16)
    assert hint[0]["train_fitnet"] > 0 and "train_at" not in hint[0]
    assert main[0]["train_at"] > 0 and np.isfinite(main[0]["train_loss"])


@pytest.mark.parametrize("key", list(SPECS))
def test_a_conv1d_student_pairs_with_transformer_hidden_states(key: str) -> None:
    """layout: {student: ncl, teacher: nlc}: an (N, C, L) student map beside (N, L, H)
    teacher hidden states gives the loss of two ncl maps (the teacher's transposed)."""
    s, t = _features(S_SHAPES, 6), _features(T_SHAPES, 7)
    nlc_t = {k: v.transpose(1, 2).contiguous() for k, v in t.items()}
    torch.manual_seed(0)
    ncl_term = _setup(_term(key), s, t)
    mixed = _setup(_term(key, layout={"student": "ncl", "teacher": "nlc"}), s, nlc_t)
    mixed.load_state_dict(ncl_term.state_dict())
    ncl_term.eval(), mixed.eval()
    want = _loss(ncl_term, s, t).item()
    assert want > 0
    assert _loss(mixed, s, nlc_t).item() == pytest.approx(want, rel=1e-6)


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        (
            {"pupil": "ncl"},
            "unknown key 'distill.terms.0 (at).layout.pupil'; valid: student, teacher",
        ),
        ({"student": "nhwc"}, "student must be 'ncl' or 'nlc'"),
        ("nhwc", "must be 'ncl' or 'nlc', or {student: ..., teacher: ...} (got 'nhwc')"),
    ],
)
def test_a_bad_layout_is_one_message(layout: object, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        build_terms([{"method": "at", "student": "a", "teacher": "x", "layout": layout}])
    # one error, not one per branch of the union (each pydantic error starts a "key")
    assert message in str(err.value) and str(err.value).count("key ") == 1, str(err.value)
