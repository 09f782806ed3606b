"""The evaluator: scores a model on a split, the same on every rank.

An evaluator module subclasses :class:`Evaluator`, sets ``name`` (its registry key),
``Params`` (its recipe keys, validated at load) and ``default_select``, and implements
:meth:`Evaluator.metric_names` and :meth:`Evaluator.evaluate`. Defining the subclass
registers it: ``train.evaluator: {name: retrieval, ks: [1, 5]}`` then finds it, and
``train.select`` may name any of its metrics. Metrics are reduced over the ranks of a
distributed run (each rank scores its shard of the split), so every rank gets the
value a single process would.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar, Generic, TypeVar

import torch
from torch import Tensor, nn

from kdlab.config import EvaluatorParams, TrainConfig
from kdlab.registry import Registry
from kdlab.taps import model_logits

P = TypeVar("P", bound=EvaluatorParams)
Batch = tuple[Tensor, Tensor, Tensor]

EVALUATORS: Registry[type[Evaluator]] = Registry("evaluator")


class Evaluator(Generic[P]):
    """Base of every evaluator; ``self.params`` is its validated recipe entry."""

    name: ClassVar[str] = ""
    Params: ClassVar[type[EvaluatorParams]] = EvaluatorParams
    default_select: ClassVar[str] = ""
    # metrics where lower is better; selection on them minimises by default
    lower_is_better: ClassVar[frozenset[str]] = frozenset({"loss"})

    def __init__(self, params: P | None = None, **kwargs: Any) -> None:
        if params is None:
            params = self.Params(name=self.name, **kwargs)  # type: ignore[assignment]
        self.params: P = params  # type: ignore[assignment]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.name:
            EVALUATORS.add(cls.name, cls)

    @classmethod
    def metric_names(cls, params: EvaluatorParams) -> list[str]:
        """The keys :meth:`evaluate` returns for these parameters."""
        raise NotImplementedError

    def evaluate(self, model: nn.Module, loader: Iterable[Batch]) -> dict[str, float]:
        """Metrics of ``model`` over the batches (this rank's shard), reduced over ranks.
        The model runs in eval mode under ``no_grad``; its mode is restored."""
        raise NotImplementedError

    def mode(self, metric: str) -> str:
        return "min" if metric in self.lower_is_better else "max"


def model_outputs(model: nn.Module, loader: Iterable[Batch]) -> Iterable[tuple[Tensor, Batch]]:
    """``(outputs, batch)`` for each batch, in eval mode and without gradients."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for batch in loader:
                yield model_logits(model(batch[0])).float(), batch
    finally:
        model.train(was_training)


def build_evaluator(params: EvaluatorParams) -> Evaluator:
    """The registered evaluator for a validated ``train.evaluator`` entry."""
    return EVALUATORS.get(params.name)(params)


def selection(train: TrainConfig, evaluator: Evaluator | None = None) -> tuple[str, str]:
    """``(metric, mode)`` that picks the best epoch: ``train.select`` or the evaluator's
    default metric, and its direction (``max``/``min``)."""
    evaluator = evaluator or build_evaluator(train.evaluator)
    metric = train.select.metric or evaluator.default_select
    return metric, train.select.mode or evaluator.mode(metric)
