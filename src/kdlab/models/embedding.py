"""Embedding networks for metric learning (DarkRank, triplet): a small CNN whose last
linear layer ``fc`` outputs a ``dim``-dimensional embedding instead of class logits.

The output size is ``dim`` when given (recipes set it, e.g. ``kwargs: {dim: 64}``),
else ``num_classes`` (what ``create_model`` passes), so the registry's contract "output
size = num_classes" holds by default. Retrieval is evaluated on classes never seen in
training, so the embedding size need not relate to the classes. Taps are those of
:class:`kdlab.models.small.SmallCNN` (``stages.N``, ``fc:input``).
"""

from __future__ import annotations

from torch import nn

from kdlab.models import register_model
from kdlab.models.small import SmallCNN


def _embedding(widths: tuple[int, ...], depth: int):  # noqa: ANN202
    def factory(
        num_classes: int, in_channels: int = 1, dim: int | None = None, **kwargs: object
    ) -> nn.Module:
        kwargs.setdefault("widths", widths)
        kwargs.setdefault("depth", depth)
        return SmallCNN(dim or num_classes, in_channels, **kwargs)  # type: ignore[arg-type]

    factory.__doc__ = f"SmallCNN{widths} embedding net, output size ``dim`` (default: num_classes)."
    return factory


register_model("embed_small")(_embedding((16, 32), 1))
register_model("embed_medium")(_embedding((32, 64, 128), 1))
