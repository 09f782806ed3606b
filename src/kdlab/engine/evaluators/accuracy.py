"""``accuracy``: top-k accuracy (percent) and cross-entropy (nats) of a classifier.

Ignite's own metrics do the counting and the reduction over ranks
(``Accuracy``, ``TopKCategoricalAccuracy``, ``Loss``).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch.nn.functional as F
from ignite.metrics import Accuracy as IgniteAccuracy
from ignite.metrics import Loss, Metric, TopKCategoricalAccuracy
from pydantic import Field
from torch import nn

from kdlab.config import EvaluatorParams
from kdlab.engine.evaluators.base import Batch, Evaluator, model_outputs


class AccuracyParams(EvaluatorParams):
    topk: list[int] = Field(
        default_factory=lambda: [1, 5],
        min_length=1,
        description="report acc<k> for each k (k above the class count counts every class)",
    )


class Accuracy(Evaluator[AccuracyParams]):
    """``acc<k>`` for each ``k`` in ``topk`` (percent) and ``loss`` (mean cross-entropy)."""

    name = "accuracy"
    Params = AccuracyParams
    default_select = "acc1"

    @classmethod
    def metric_names(cls, params: AccuracyParams) -> list[str]:  # type: ignore[override]
        return [f"acc{k}" for k in params.topk] + ["loss"]

    def evaluate(self, model: nn.Module, loader: Iterable[Batch]) -> dict[str, float]:
        metrics: dict[str, Metric] | None = None
        for logits, (_x, y, _i) in model_outputs(model, loader):
            if metrics is None:
                metrics = self._metrics(logits.shape[1], logits.device)
            for metric in metrics.values():
                metric.update((logits, y))
        if metrics is None:  # an empty shard: its rank still takes part in the reduction
            metrics = self._metrics(max(self.params.topk), None)
        out = {name: float(m.compute()) for name, m in metrics.items()}
        return {k: 100.0 * v if k != "loss" else v for k, v in out.items()}

    def _metrics(self, num_classes: int, device: object) -> dict[str, Metric]:
        kw = {"device": device} if device is not None else {}
        metrics: dict[str, Metric] = {}
        for k in self.params.topk:
            kk = min(k, num_classes)
            metrics[f"acc{k}"] = (
                IgniteAccuracy(**kw) if kk == 1 else TopKCategoricalAccuracy(k=kk, **kw)
            )
        metrics["loss"] = Loss(F.cross_entropy, **kw)
        return metrics
