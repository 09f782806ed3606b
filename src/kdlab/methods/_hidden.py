"""Shared pieces of the hidden-state methods (``hidden_mse``, ``hidden_cosine``).

Not a method: it registers nothing. Hidden states carry their features on the last
dimension: ``(N, L, H)`` from a transformer layer, or ``(N, H)`` pooled features.
"""

from __future__ import annotations

import torch
from torch import nn

from kdlab.errors import TapError
from kdlab.methods._features import probed_pairs
from kdlab.methods.base import Shapes, Term
from kdlab.taps import Tap


def hidden_pairs(term: Term, shapes: Shapes) -> list[tuple[Tap, Tap, int, int]]:
    """``(student_tap, teacher_tap, student_width, teacher_width)`` per pair, after checking
    that both are ``(N, L, H)`` or ``(N, H)`` with the same leading sizes."""
    pairs = []
    for s, t, s_shape, t_shape in probed_pairs(term, shapes):
        if (
            len(s_shape) not in (2, 3)
            or s_shape[1:-1] != t_shape[1:-1]
            or len(s_shape) != len(t_shape)
        ):
            raise TapError(
                f"term {term.term_name!r} ({term.method}) matches hidden states (N, L, H) or "
                f"(N, H) with the same sequence length; student tap {str(s)!r} gives "
                f"{tuple(s_shape)[1:]} and teacher tap {str(t)!r} gives {tuple(t_shape)[1:]}"
            )
        pairs.append((s, t, int(s_shape[-1]), int(t_shape[-1])))
    return pairs


def width_map(h_s: int, h_t: int, learned: bool) -> nn.Module:
    """A learned ``Linear(h_s, h_t)`` (TinyBERT's ``W_h``), or the identity when widths
    agree and no map is asked for."""
    if learned:
        return nn.Linear(h_s, h_t)
    if h_s != h_t:  # pragma: no cover - callers ask for a map whenever widths differ
        raise ValueError(f"widths {h_s} and {h_t} differ: a map is needed")
    return nn.Identity()


def mapped(maps: nn.ModuleList, index: int, hs: torch.Tensor) -> torch.Tensor:
    """Apply pair ``index``'s map (one shared map when the list holds one)."""
    return maps[index if len(maps) > 1 else 0](hs)
