"""``retrieval``: Recall@K of nearest-neighbour retrieval over a split's embeddings.

The model's output is an embedding; each sample, L2-normalised, queries all the others
(Euclidean distance); a hit is one of the K nearest sharing its label. Every rank
embeds its shard; the shards are gathered and put back in the split's order, so the
result equals one process's. Used for metric learning (DarkRank), where classes at
test time are unseen in training and accuracy means nothing.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from kdlab.config import EvaluatorParams
from kdlab.engine import distributed as dist
from kdlab.engine.evaluators.base import Batch, Evaluator, model_outputs
from kdlab.functional.rank import recall_at_k


class RetrievalParams(EvaluatorParams):
    ks: list[int] = Field(default_factory=lambda: [1, 5], min_length=1)


class Retrieval(Evaluator[RetrievalParams]):
    """``recall@<k>`` (percent) for each ``k`` in ``ks``."""

    name = "retrieval"
    Params = RetrievalParams
    default_select = "recall@1"
    lower_is_better = frozenset()

    @classmethod
    def metric_names(cls, params: RetrievalParams) -> list[str]:  # type: ignore[override]
        return [f"recall@{k}" for k in params.ks]

    def evaluate(self, model: nn.Module, loader: Iterable[Batch]) -> dict[str, float]:
        embs, labels, index = [], [], []
        for out, (_x, y, idx) in model_outputs(model, loader):
            embs.append(F.normalize(out.flatten(1), dim=1).cpu())
            labels.append(y.cpu())
            index.append(idx.cpu())
        emb, y, idx = (_cat(t) for t in (embs, labels, index))
        emb, y, idx = dist.gather_rows(emb), dist.gather_rows(y), dist.gather_rows(idx)
        order = idx.argsort()
        recall = recall_at_k(emb[order], y[order], ks=tuple(self.params.ks))
        return {f"recall@{k}": 100.0 * v for k, v in recall.items()}


def _cat(parts: list[Tensor]) -> Tensor:
    return torch.cat(parts) if parts else torch.empty(0)
