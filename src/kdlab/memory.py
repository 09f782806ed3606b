"""CRD's memory bank: one momentum-updated embedding per training sample, per model.

Tian et al. (arXiv:1910.10699, sec. 3.4 and appendix) draw N negatives per positive
from a memory buffer instead of a huge batch, as in instance discrimination (Wu et al.
2018). The banks are buffers, so they are saved with a checkpoint and move with
``.to()``; loading a checkpoint resizes them to the saved size.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdlab.errors import DataError


def bank_dots(anchor: Tensor, bank: Tensor, idx: Tensor) -> Tensor:
    """``out[i, j] = <anchor[i], bank[idx[i, j]]>``, the cheaper of two exact ways.

    Gathering ``b x (1 + N)`` bank rows copies ``b (1 + N) d`` numbers (537 MB per step
    for CIFAR's 64 x 16385 x 128); when the bank is not much larger than that, one
    ``b x M`` product with the whole bank followed by a gather of scalars is faster.
    """
    b, k = idx.shape
    bank = bank.to(anchor.dtype)
    if bank.shape[0] <= 8 * k:
        # the product keeps the bank for backward and the bank is updated in place after
        # this call, so it multiplies a copy (N d numbers, far fewer than the gather)
        return torch.gather(anchor @ bank.t().clone(), 1, idx)
    rows = bank.index_select(0, idx.reshape(-1)).view(b, k, -1)  # a copy: the bank may change
    return torch.bmm(rows, anchor.unsqueeze(2)).squeeze(2)


class ContrastMemory(nn.Module):
    """Student and teacher embedding banks, ``(num_data, dim)`` each, and the scores.

    ``scores(es, et, indices)`` returns two ``(b, 1 + N)`` tensors of
    ``exp(<anchor, bank entry> / tau) / Z``: the student embeddings against the teacher
    bank and the teacher embeddings against the student bank, column 0 being the
    sample's own entry (the positive). ``Z`` is estimated once, from the first batch,
    as ``mean(exp(...)) * num_data`` and then kept fixed (the authors' NCE
    implementation). Negatives are drawn with replacement, uniformly from the other
    ``num_data - 1`` samples or, after :meth:`set_labels`, from the samples of other
    classes (RepDistiller's CIFAR "exact" mode). In training mode the banks are then updated:
    ``m * old + (1 - m) * new``, renormalised.
    """

    memory_s: Tensor
    memory_t: Tensor
    z_s: Tensor
    z_t: Tensor

    def __init__(
        self,
        dim: int,
        num_data: int = 0,
        num_negatives: int = 16384,
        temperature: float = 0.07,
        momentum: float = 0.5,
    ) -> None:
        super().__init__()
        self.dim = dim
        self.num_negatives = num_negatives
        self.temperature = temperature
        self.momentum = momentum
        self.register_buffer("memory_s", torch.empty(0, dim))
        self.register_buffer("memory_t", torch.empty(0, dim))
        self.register_buffer("z_s", torch.tensor(-1.0))
        self.register_buffer("z_t", torch.tensor(-1.0))
        # other-class negatives (set_labels): derived from labels, so not saved
        for name in ("_class_order", "_sample_start", "_sample_count"):
            self.register_buffer(name, None, persistent=False)
        if num_data:
            self.reset(num_data)

    @property
    def num_data(self) -> int:
        return int(self.memory_s.shape[0])

    @torch.no_grad()
    def reset(self, num_data: int) -> None:
        """(Re)allocate both banks for ``num_data`` samples, uniform in ``[-a, a]``.

        ``a = 1 / sqrt(dim / 3)`` gives each coordinate variance ``1 / dim``, so a random
        entry has about unit norm, like the embeddings that will replace it.
        """
        if num_data < 2:
            raise DataError(f"crd needs a training set of at least 2 samples, got {num_data}")
        device = self.memory_s.device
        a = 1.0 / math.sqrt(self.dim / 3.0)
        self.memory_s = torch.rand(num_data, self.dim, device=device) * (2 * a) - a
        self.memory_t = torch.rand(num_data, self.dim, device=device) * (2 * a) - a
        self.z_s = torch.tensor(-1.0, device=device)
        self.z_t = torch.tensor(-1.0, device=device)
        self.set_labels(None)

    def set_labels(self, labels: Tensor | None) -> None:
        """Training labels, for negatives drawn from other classes only (``None``: off).

        Kept as non-persistent buffers: the engine binds them again on resume.
        """
        if labels is None:
            self._class_order = self._sample_start = self._sample_count = None
            return
        labels = torch.as_tensor(labels).long().reshape(-1).to(self.memory_s.device)
        if labels.numel() != self.num_data:
            raise DataError(
                f"crd: {labels.numel()} labels for a memory bank of {self.num_data} samples"
            )
        order = torch.argsort(labels, stable=True)
        counts = torch.bincount(labels)
        starts = torch.cumsum(counts, 0) - counts
        if int(counts.max()) == self.num_data:
            raise DataError("crd: other-class negatives need at least two classes")
        self._class_order = order
        self._sample_start = starts[labels]
        self._sample_count = counts[labels]

    def draw(self, indices: Tensor) -> Tensor:
        """``(b, 1 + N)`` bank rows: each sample's own index, then N others.

        Negatives are uniform, with replacement, over the other ``num_data - 1`` samples,
        or over the samples of other classes once :meth:`set_labels` was given labels.
        """
        n = self.num_data
        k = min(self.num_negatives, n - 1)
        if self._class_order is not None:
            start = self._sample_start[indices][:, None]
            count = self._sample_count[indices][:, None]
            high = n - count  # how many samples lie outside the class block
            r = (torch.rand(indices.shape[0], k, device=indices.device) * high).long()
            r = torch.minimum(r, high - 1)
            r = r + (r >= start).long() * count  # jump over the class block
            neg = self._class_order[r]
        else:
            neg = torch.randint(0, n - 1, (indices.shape[0], k), device=indices.device)
            neg = neg + (neg >= indices[:, None]).long()  # skip the positive itself
        return torch.cat([indices[:, None], neg], dim=1)

    def scores(self, es: Tensor, et: Tensor, indices: Tensor) -> tuple[Tensor, Tensor]:
        if self.num_data == 0:
            raise DataError("crd: the memory bank is empty; bind_data(num_samples) first")
        indices = indices.to(self.memory_s.device).long()
        if int(indices.min()) < 0 or int(indices.max()) >= self.num_data:
            raise DataError(
                f"crd: sample indices must lie in [0, {self.num_data - 1}] (the training "
                f"set), got [{int(indices.min())}, {int(indices.max())}]"
            )
        idx = self.draw(indices)
        # exp(<a, b> / 0.07) reaches e^14: compute in float32 whatever autocast says.
        with torch.autocast(device_type=es.device.type, enabled=False):
            out_s = torch.exp(bank_dots(es.float(), self.memory_t, idx) / self.temperature)
            out_t = torch.exp(bank_dots(et.float(), self.memory_s, idx) / self.temperature)
        with torch.no_grad():
            if self.z_s < 0:
                self.z_s.fill_(float(out_s.mean()) * self.num_data)
            if self.z_t < 0:
                self.z_t.fill_(float(out_t.mean()) * self.num_data)
        if self.training:
            self.update(es.detach(), et.detach(), indices)
        return out_s / self.z_s, out_t / self.z_t

    @torch.no_grad()
    def update(self, es: Tensor, et: Tensor, indices: Tensor) -> None:
        m = self.momentum
        for bank, new in ((self.memory_s, es), (self.memory_t, et)):
            mixed = bank[indices] * m + new.to(bank.dtype) * (1.0 - m)
            bank.index_copy_(0, indices, F.normalize(mixed, p=2, dim=1))

    def _load_from_state_dict(
        self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any
    ) -> None:
        # A checkpoint's banks define the size: adopt it before the copy.
        for name in ("memory_s", "memory_t"):
            saved = state_dict.get(prefix + name)
            current = getattr(self, name)
            if isinstance(saved, Tensor) and saved.shape != current.shape:
                setattr(self, name, torch.empty_like(saved, device=current.device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
