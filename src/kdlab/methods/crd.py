"""``crd``: Tian, Krishnan & Isola, Contrastive Representation Distillation."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from torch import Tensor

from kdlab.errors import ConfigError, DataError, TapError
from kdlab.functional.relations import crd_nce_loss
from kdlab.heads import Embed
from kdlab.memory import ContrastMemory
from kdlab.methods.base import Shapes, StepContext, Term, TermParams


class CRDParams(TermParams):
    student: list[str] = Field(default_factory=lambda: ["fc:input"], min_length=1, max_length=1)
    teacher: list[str] = Field(default_factory=lambda: ["fc:input"], min_length=1, max_length=1)
    embed_dim: int = Field(128, ge=1, description="dimension of the embedding heads")
    num_negatives: int = Field(
        16384, ge=1, description="negatives per positive (capped at training-set size - 1)"
    )
    temperature: float = Field(0.07, gt=0.0, description="tau of the critic")
    momentum: float = Field(0.5, ge=0.0, lt=1.0, description="memory bank update momentum")
    negatives: Literal["uniform", "other_class"] = Field(
        "uniform",
        description="uniform over the other samples (the paper), or only samples of other "
        "classes (RepDistiller's CIFAR 'exact' mode; needs bind_data(..., labels))",
    )
    num_data: int | None = Field(
        None, ge=2, description="training-set size; the engine fills it (bind_data)"
    )


class ContrastiveRepresentationDistillation(Term[CRDParams]):
    """Contrast the student's embedding of a sample with the teacher's, against negatives.

    Paper: Tian, Krishnan & Isola, Contrastive Representation Distillation, ICLR 2020
    (arXiv:1910.10699).

    Linear + L2-norm heads ``g_S``, ``g_T`` (``embed_dim`` 128) map the penultimate
    features; the critic is ``h = e^{g_T(t).g_S(s)/tau} / (e^{...} + N/M)`` and the NCE
    loss of eq. 19-20 is computed with N negatives drawn from a memory bank holding a
    momentum-updated embedding of every one of the M training samples
    (:class:`kdlab.memory.ContrastMemory`,
    :func:`kdlab.functional.relations.crd_nce_loss`). As in the authors' code the loss
    is symmetric: student anchors against the teacher bank plus teacher anchors against
    the student bank. The teacher head is trained by this loss; the teacher is not.

    Needs sample indices (``StepContext.indices``, batches ``(x, y, index)``) and the
    training-set size: ``bind_data(num_samples)``, called by the engine, or the
    ``num_data`` param.

    Defaults: N = 16384, tau = 0.07, momentum 0.5 (the paper's and RepDistiller's),
    weight 0.2 beside ``ce`` at 1. The reference protocol's 0.8 left the student below
    the label-only one on both 10-class datasets it was tried on (a 28x28 dataset outside
    this repository: -3.2 points; Fashion-MNIST cnn3 -> cnn_tiny, 8 epochs: -1.5, one
    seed), at 0.2 by less (-0.9): with 10 classes a tenth of uniform negatives share the
    anchor's class (a hundredth on CIFAR-100), and pushing them apart works against the
    labels. Negatives are uniform over the other samples by default, as in the paper's
    formulation; RepDistiller, whose runs produced the reference table, draws them from
    other classes only on CIFAR ("exact" mode): ``negatives: other_class``, which uses
    the labels the engine passes to ``bind_data(num_samples, labels)``. The bank lives
    on each process: with DDP every rank keeps its own (the authors' code is
    single-process).
    """

    method = "crd"
    default_weight = 0.2

    def __init__(self, params: CRDParams) -> None:
        super().__init__(params)
        self._num_data = params.num_data or 0
        self._labels: Tensor | None = None

    def setup(self, shapes: Shapes) -> None:
        p = self.params
        ((s, t),) = self.paired_taps()
        self.embed_s = Embed(shapes.student[s][1:].numel(), p.embed_dim)
        self.embed_t = Embed(shapes.teacher[t][1:].numel(), p.embed_dim)
        self.memory = ContrastMemory(
            p.embed_dim, self._num_data, p.num_negatives, p.temperature, p.momentum
        )
        self.memory.to(self.embed_s.linear.weight.device)
        self.memory.set_labels(self._labels)

    def bind_data(self, num_samples: int, labels: Tensor | None = None) -> None:
        """Size the memory bank for a training set of ``num_samples`` (engine hook).

        ``labels`` (the training labels, by sample index) are kept only for ``negatives:
        other_class``; with ``uniform`` they are ignored. May be called before or after
        ``setup``; a bank of another size is reallocated.
        """
        self._num_data = int(num_samples)
        p: CRDParams = self.params  # type: ignore[assignment]
        # The engine always passes the labels; only other-class negatives may use them
        # (keeping them for 'uniform' silently drew other-class negatives every run).
        keep = labels is not None and p.negatives == "other_class"
        self._labels = labels.detach().long().reshape(-1).cpu() if keep else None
        memory = getattr(self, "memory", None)
        if memory is not None:
            if memory.num_data != self._num_data:
                memory.reset(self._num_data)
            memory.set_labels(self._labels)

    def forward(self, ctx: StepContext) -> Tensor:
        if not hasattr(self, "memory"):
            raise TapError(f"term {self.term_name!r}: crd was not set up (no shape probe)")
        if self.memory.num_data == 0:
            raise ConfigError(
                f"term {self.term_name!r}: crd needs the training-set size; set "
                "'num_data' or call bind_data(num_samples) before training"
            )
        p = self.params
        if p.negatives == "other_class" and self.memory._class_order is None:
            raise ConfigError(
                f"term {self.term_name!r}: negatives 'other_class' needs the training labels; "
                "call bind_data(num_samples, labels) or use negatives: uniform"
            )
        if ctx.indices is None:
            raise DataError(
                f"term {self.term_name!r}: crd needs sample indices; the training data "
                "must yield (x, y, index) batches"
            )
        ((s, t),) = self.paired_taps()
        es = self.embed_s(ctx.s(s))
        et = self.embed_t(ctx.t(t))
        out_s, out_t = self.memory.scores(es, et, ctx.indices)
        n = self.memory.num_data
        return crd_nce_loss(out_s, n) + crd_nce_loss(out_t, n)
