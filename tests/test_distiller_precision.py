"""Under bf16 autocast the models run in bf16 but every term's loss is computed in float32.

The models below are exact in bf16 (small integers, or powers of two, through linear
layers that accumulate in float32), so their bf16 outputs equal their fp32 outputs and
the losses under autocast must equal the fp32 ones: any difference is the loss math
running in bf16. Before the fix (losses under autocast) the KD case came out exactly 0.0
instead of 7.6294e-6 (bf16's log-softmax of two near-uniform logit vectors rounds to the
same values) and SP's 0.045654 instead of 0.045472.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from kdlab.distiller import Distiller, DistillOutput
from kdlab.methods import build_terms


def _linear(weight: list[list[float]]) -> nn.Linear:
    w = torch.tensor(weight)
    layer = nn.Linear(w.shape[1], w.shape[0], bias=False)
    layer.weight.data.copy_(w)
    return layer


def _both(d: Distiller, x: torch.Tensor, y: torch.Tensor) -> tuple[DistillOutput, DistillOutput]:
    fp32 = d(x, y)
    seen: set[torch.dtype] = set()
    hook = d.student.register_forward_hook(lambda m, i, o: seen.add(o.dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = d(x, y)
    hook.remove()
    assert seen == {torch.bfloat16}  # the forward itself did run in bf16
    return fp32, bf16


def test_kd_of_near_uniform_logits_is_float32_under_bf16_autocast() -> None:
    # logits z_s = [2/256, 0], z_t = 2 z_s: both exact in bf16, T = 4
    student, teacher = _linear([[1, 0], [0, 1]]), _linear([[2, 0], [0, 2]])
    x = torch.tensor([[2 / 256, 0.0], [0.0, 2 / 256]])
    terms = build_terms([{"method": "kd", "T": 4.0, "weight": 1.0}])
    fp32, bf16 = _both(Distiller(student, teacher, terms), x, torch.tensor([0, 1]))

    # By hand in float64: T^2 * KL(softmax(z_t/T) || softmax(z_s/T)), the same per row.
    zs = torch.tensor([2 / 256 / 4, 0.0], dtype=torch.float64)
    ps, pt = zs.softmax(0), (2 * zs).softmax(0)
    expected = 16 * float((pt * (pt.log() - ps.log())).sum())
    assert expected == pytest.approx(7.62937e-6, rel=1e-5)
    assert fp32.losses["kd"].item() == pytest.approx(expected, rel=1e-5)
    assert bf16.losses["kd"].item() != 0.0  # what the loss in bf16 gave
    assert bf16.losses["kd"].item() == pytest.approx(fp32.losses["kd"].item(), rel=1e-6)
    assert bf16.losses["kd"].dtype == bf16.total.dtype == torch.float32


def test_feature_term_is_float32_under_bf16_autocast() -> None:
    # Tapped features are small integers (exact in bf16); the teacher's differ from the
    # student's in one weight, so SP's loss is a small difference of similarity matrices.
    w = [[1, 0, 2, -1], [0, 1, 1, 2], [2, -1, 0, 1], [1, 1, -1, 0], [0, 2, 1, 1], [-1, 0, 1, 2]]
    w_t = [row[:] for row in w]
    w_t[2][1] = 0
    head = [[1, 0, 0, 1, 0, 0], [0, 1, 0, 0, 1, 0], [0, 0, 1, 0, 0, 1]]
    student = nn.Sequential(_linear(w), _linear(head))
    teacher = nn.Sequential(_linear(w_t), _linear(head))
    x = torch.tensor([[1.0, 2, 0, -1], [0, 1, 3, 1], [2, -1, 1, 0], [1, 1, 1, 2]])
    terms = build_terms([{"method": "sp", "student": ["0"], "teacher": ["0"], "weight": 1.0}])
    d = Distiller(student, teacher, terms, example_input=x)
    fp32, bf16 = _both(d, x, torch.tensor([0, 1, 2, 0]))

    # By hand in float64: b * ||G_t - G_s||_F^2 / b^2, G the row-normalised Q Q^T.
    def g(weight: list[list[float]]) -> torch.Tensor:
        q = x.double() @ torch.tensor(weight, dtype=torch.float64).t()
        m = q @ q.t()
        return m / m.norm(dim=1, keepdim=True)

    expected = float((g(w_t) - g(w)).pow(2).sum()) / 4
    assert fp32.losses["sp"].item() == pytest.approx(expected, rel=1e-5)
    assert bf16.losses["sp"].item() == pytest.approx(fp32.losses["sp"].item(), rel=1e-6)
    assert bf16.losses["sp"].dtype == bf16.total.dtype == torch.float32
    assert math.isfinite(expected) and expected > 0
