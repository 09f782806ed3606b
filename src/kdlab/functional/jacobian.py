"""Jacobian matching (Srinivas & Fleuret, Knowledge Transfer with Jacobian Matching,
ICML 2018, arXiv:1803.00443): input-gradients of selected outputs and their matching loss.

The paper shows (its Prop. 1) that squared-error distillation under Gaussian input noise
``x + sigma*z`` equals noise-free distillation plus ``sigma^2 * sum_i ||grad T_i - grad S_i||^2``
up to O(sigma^4) for locally affine outputs; ``kdlab verify propositions`` checks that
claim and its cross-entropy relatives by Monte Carlo. For training it matches the
L2-normalised gradients (the magnitudes of two different networks' gradients are not
comparable, only their directions):

    loss = mean_n sum_{i in I(n)} || g_T,i / ||g_T,i||_2 - g_S,i / ||g_S,i||_2 ||_2^2,
    g_M,i = d M_i(x_n) / d x_n  (flattened over all input dimensions),

where ``I(n)`` is the set of outputs whose gradients are matched (one output per sample
by default, since each output costs one backward per model).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

ClassChoice = Literal["teacher_top1", "label", "all", "random"]


def select_classes(
    choice: ClassChoice,
    teacher_logits: Tensor,
    targets: Tensor | None = None,
    k: int = 1,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Indices ``(N, K)`` of the outputs whose input-gradients are matched.

    ``teacher_top1``: the teacher's arg-max (K = 1); ``label``: the true class (K = 1);
    ``all``: every output (K = C); ``random``: ``k`` distinct classes drawn per sample.
    """
    n, c = teacher_logits.shape
    device = teacher_logits.device
    if choice == "teacher_top1":
        return teacher_logits.detach().argmax(dim=1, keepdim=True)
    if choice == "label":
        if targets is None or targets.dim() != 1:
            raise ValueError("classes='label' needs integer class targets of shape (N,)")
        return targets.long().view(n, 1)
    if choice == "all":
        return torch.arange(c, device=device).expand(n, c)
    if choice == "random":
        if not 1 <= k <= c:
            raise ValueError(f"classes='random' needs 1 <= k <= {c} outputs, got k={k}")
        scores = torch.rand(n, c, generator=generator, device="cpu").to(device)
        return scores.topk(k, dim=1).indices
    raise ValueError(f"unknown class choice {choice!r}: teacher_top1, label, all or random")


def output_input_gradients(
    outputs: Tensor, inputs: Tensor, classes: Tensor, create_graph: bool
) -> Tensor:
    """``(N, K, D)``: the gradient of ``outputs[n, classes[n, k]]`` with respect to ``inputs[n]``.

    One backward per column of ``classes`` (summing over the batch gives per-sample
    gradients because samples do not interact; with BatchNorm in train mode they do,
    through the batch statistics, and those small cross-sample terms are included, as
    in every implementation that differentiates a summed output).

    Args:
        outputs: ``(N, C)`` computed from ``inputs`` (which requires grad).
        inputs: ``(N, ...)`` leaf the outputs were built on.
        classes: ``(N, K)`` output indices.
        create_graph: True for the student (the loss trains through the gradient),
            False for the frozen teacher (its gradient is a constant target).
    """
    if not inputs.requires_grad:
        raise ValueError("inputs must require grad: run the model on x.requires_grad_(True)")
    n, k = classes.shape
    grads = []
    for j in range(k):
        picked = outputs.gather(1, classes[:, j : j + 1]).sum()
        (g,) = torch.autograd.grad(
            picked, inputs, create_graph=create_graph, retain_graph=create_graph or j < k - 1
        )
        grads.append(g.reshape(n, -1))
    out = torch.stack(grads, dim=1)
    return out if create_graph else out.detach()


def jacobian_matching_loss(
    student_grads: Tensor, teacher_grads: Tensor, eps: float = 1e-12
) -> Tensor:
    """``mean_n sum_k || t/||t||_2 - s/||s||_2 ||_2^2`` on ``(N, K, D)`` gradients.

    Each per-output term lies in [0, 4] (0: same direction, 4: opposite). A zero gradient
    (e.g. every ReLU dead) normalises to the zero vector instead of dividing by zero.
    """
    if student_grads.shape != teacher_grads.shape:
        raise ValueError(
            f"student gradients {tuple(student_grads.shape)} and teacher gradients "
            f"{tuple(teacher_grads.shape)} differ: student and teacher must see inputs of "
            "the same shape"
        )
    s = F.normalize(student_grads, p=2, dim=-1, eps=eps)
    t = F.normalize(teacher_grads, p=2, dim=-1, eps=eps)
    return (t - s).pow(2).sum(dim=(1, 2)).mean()
