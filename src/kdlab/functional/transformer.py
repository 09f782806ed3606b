"""Losses on transformer taps: hidden states ``(N, L, H)`` and attention ``(N, heads, L, L)``.

Pure functions: mapping the student's width onto the teacher's (TinyBERT's ``W_h``) is the
caller's job (:mod:`kdlab.methods.hidden_mse`). Every function returns a scalar averaged
over the batch and every other position, so its scale does not depend on the batch size
or the sequence length.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from kdlab.errors import TapError


def _check_same_shape(a: Tensor, b: Tensor, what: str) -> None:
    if a.shape != b.shape:
        raise TapError(f"{what}: student {tuple(a.shape)} and teacher {tuple(b.shape)} differ")


def hidden_mse(hs: Tensor, ht: Tensor) -> Tensor:
    """TinyBERT's hidden-state loss (Jiao et al., arXiv:1909.10351, eq. 8):
    ``MSE(H_s W_h, H_t)``, the mean of squared differences over every element.

    ``hs`` is the student's hidden state already mapped to the teacher's width (``H_s
    W_h``); both are ``(N, L, H)`` (or ``(N, H)``). TinyBERT's code takes the same mean
    (``MSELoss()`` over all elements).
    """
    _check_same_shape(hs, ht, "hidden_mse")
    return F.mse_loss(hs, ht.to(hs.dtype))


def attention_kl(attn_s: Tensor, attn_t: Tensor, eps: float = 1e-12) -> Tensor:
    """MiniLM's self-attention distribution transfer (Wang et al., arXiv:2002.10957, eq. 2):
    ``KL(A_t || A_s)`` of each query's attention distribution over the keys, averaged over
    the batch, the heads and the queries.

    Both are probabilities ``(N, heads, L, L)`` whose last dimension sums to 1 (softmax
    outputs). Zeros in the teacher (masked keys) contribute nothing; ``eps`` keeps a zero
    in the student finite.
    """
    _check_same_shape(attn_s, attn_t, "attention_kl")
    t = attn_t.to(attn_s.dtype)
    kl = t * (torch.log(t.clamp_min(eps)) - torch.log(attn_s.clamp_min(eps)))
    return kl.sum(dim=-1).mean()


def hidden_cosine(hs: Tensor, ht: Tensor, eps: float = 1e-8) -> Tensor:
    """DistilBERT's cosine embedding loss on hidden states (Sanh et al., arXiv:1910.01108):
    ``1 - cos(h_s, h_t)`` per position (the cosine over the last dimension), averaged
    over the batch and the positions."""
    _check_same_shape(hs, ht, "hidden_cosine")
    return (1.0 - F.cosine_similarity(hs, ht.to(hs.dtype), dim=-1, eps=eps)).mean()
