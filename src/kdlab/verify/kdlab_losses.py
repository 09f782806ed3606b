r"""Claims 5 and 6: kdlab's own losses under input noise, beside the notes' forms.

The notes' claims 1-4 are about formulas; what kdlab trains with are its functions in
:mod:`kdlab.functional`. Here the loss inside the expectation and both right sides are
computed with them, for teacher and student logits ``T(x), S(x)`` (maps R^D -> R^k):

5. **Logit regression under noise** (``logit_regression``, Ba & Caruana's
   ``1/2 ||S - T||^2``). Paired with kdlab's Jacobian term, as the paper pairs noise and
   Jacobian matching: ``E l(x + xi) ~ l(x) + s^2 * jacobian_matching_loss`` (kdlab's
   term compares L2-normalised input-gradients). Second-order exact for locally affine
   logits: ``l(x) + s^2/2 sum_i ||gT_i - gS_i||^2`` with the gradients from kdlab's
   ``output_input_gradients`` (every output), i.e. claim 1 with kdlab's scale 1/2.
6. **Noisy KD** (``kd_loss`` at T = 4 with both models on the same noisy input: kdlab's
   ``noisy_kd`` recipe). The notes' claim 2 on the softened outputs ``p = softmax(z/4)``,
   scaled by ``T^2`` as ``kd_loss`` is, with the teacher's entropy taken as unchanged:
   ``E kd(x + xi) ~ kd(x) - T^2 s^2 sum_i gp_t,i . gp_s,i / p_s,i`` (gradients from
   ``output_input_gradients``). Second-order exact: ``kd(x) + s^2/2 tr Hess kd(x)``,
   the Hessian by autograd through ``kd_loss`` itself.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch.func import hessian

from kdlab.functional.jacobian import jacobian_matching_loss, output_input_gradients, select_classes
from kdlab.functional.logits import kd_loss, logit_regression

Fn = Callable[[Tensor], Tensor]
KD_TEMPERATURE = 4.0
CLAIMS = {
    5: "E logit_regression(x+xi) ~ logit_regression(x) + s^2 jacobian_matching_loss(x)",
    6: "E kd_loss(x+xi) ~ kd_loss(x) - T^2 s^2 sum_i gp_t,i . gp_s,i / p_s,i (notes' claim 2)",
}
CORRECTED = {
    5: "logit_regression(x) + s^2/2 sum_i ||gT_i - gS_i||^2 (output_input_gradients)",
    6: "kd_loss(x) + s^2/2 tr Hess kd_loss(x) (autograd through kd_loss)",
}


def loss(claim: int, t: Tensor, s: Tensor) -> Tensor:
    """kdlab's loss on one sample's outputs ``(..., k)`` (a batch of one)."""
    t2, s2 = t.reshape(-1, t.shape[-1]), s.reshape(-1, s.shape[-1])
    if claim == 5:
        return logit_regression(s2, t2)
    if claim == 6:
        return kd_loss(s2, t2, KD_TEMPERATURE)
    raise ValueError(f"kdlab claims are 5 and 6, got {claim}")


def _grads(fn: Fn, x: Tensor) -> Tensor:
    """``(k, D)`` input-gradients of every output, by kdlab's ``output_input_gradients``."""
    xi = x.detach().reshape(1, -1).requires_grad_(True)
    with torch.enable_grad():
        out = fn(xi[0]).reshape(1, -1)
        classes = select_classes("all", out.detach())
        return output_input_gradients(out, xi, classes, create_graph=False)[0]


def forms(claim: int, sigma: float, teacher: Fn, student: Fn, x: Tensor) -> tuple[float, float]:
    """``(paired form, second-order form)`` of the claim at ``x``."""
    s2 = sigma * sigma
    f0 = float(loss(claim, teacher(x), student(x)))
    if claim == 5:
        gt, gs = _grads(teacher, x), _grads(student, x)
        paired = f0 + s2 * float(jacobian_matching_loss(gs[None], gt[None]))
        return paired, f0 + 0.5 * s2 * float((gt - gs).pow(2).sum())
    if claim == 6:
        tau = KD_TEMPERATURE

        def soft(fn: Fn) -> Fn:
            return lambda v: torch.softmax(fn(v) / tau, dim=-1)

        gpt, gps = _grads(soft(teacher), x), _grads(soft(student), x)
        ps = soft(student)(x)
        cross = ((gpt * gps).sum(-1) / ps).sum()
        paired = f0 - tau * tau * s2 * float(cross)
        lap = torch.diagonal(hessian(lambda v: loss(6, teacher(v), student(v)))(x)).sum()
        return paired, f0 + 0.5 * s2 * float(lap)
    raise ValueError(f"kdlab claims are 5 and 6, got {claim}")
