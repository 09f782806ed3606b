"""In-memory splits and the bundle a dataset builder returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from kdlab.errors import DataError


@dataclass
class TensorSplit:
    """A split held as tensors: ``x`` float (N, C, H, W), ``y`` long (N,)."""

    x: Tensor
    y: Tensor

    def __post_init__(self) -> None:
        if self.x.dim() < 1 or self.y.dim() != 1:
            raise DataError(
                f"inputs need a sample dimension and labels must be 1-D, got shapes "
                f"{tuple(self.x.shape)} and {tuple(self.y.shape)}"
            )
        if self.x.shape[0] != self.y.shape[0]:
            raise DataError(f"{self.x.shape[0]} inputs but {self.y.shape[0]} labels")

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor, int]:
        return self.x[i], self.y[i], i

    def subset(self, idx: Tensor | np.ndarray) -> TensorSplit:
        idx_t = torch.as_tensor(np.asarray(idx), dtype=torch.long)
        return TensorSplit(self.x[idx_t], self.y[idx_t])

    def example(self, n: int) -> Tensor:
        """The first ``n`` inputs (shape probes)."""
        return self.x[:n]


class Split(Protocol):
    """What the engine may assume of any split, in memory or streamed from disk."""

    y: Tensor

    def __len__(self) -> int: ...

    def example(self, n: int) -> Tensor: ...

    def subset(self, idx: Tensor | np.ndarray) -> Split: ...


@dataclass
class DataBundle:
    """Train / val / test splits plus what models need to know about the inputs."""

    train: Split
    val: Split | None
    test: Split
    num_classes: int
    in_channels: int
    image_size: tuple[int, int]
    name: str = ""
    extra: dict[str, object] = field(default_factory=dict)


def check_labels(y: np.ndarray | Tensor, num_classes: int, source: str) -> None:
    """Labels must be integers in ``[0, num_classes)``."""
    y = y.cpu().numpy() if isinstance(y, Tensor) else np.asarray(y)
    if y.size == 0:
        raise DataError(f"{source}: no samples")
    if y.ndim != 1:
        raise DataError(f"{source}: labels must be 1-D (one per sample), got shape {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{source}: labels must be integers, got dtype {y.dtype}")
    lo, hi = int(y.min()), int(y.max())
    if lo < 0 or hi >= num_classes:
        raise DataError(
            f"{source}: labels must lie in [0, {num_classes - 1}], found values in [{lo}, {hi}]"
        )


def check_finite(x: np.ndarray | Tensor, source: str) -> None:
    """Inputs must be numbers, none NaN or infinite."""
    if isinstance(x, Tensor):
        finite = torch.isfinite(x) if x.is_floating_point() or x.is_complex() else None
        bad = 0 if finite is None else int((~finite).sum())
    else:
        # numpy directly: torch cannot convert every numpy dtype (uint16, object, str).
        x = np.asarray(x)
        if not (np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_):
            raise DataError(f"{source}: inputs must be numbers, got dtype {x.dtype}")
        bad = int((~np.isfinite(x)).sum()) if np.issubdtype(x.dtype, np.inexact) else 0
    if bad:
        raise DataError(f"{source}: {bad} input values are NaN or infinite")


def stratified_split(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(keep, held_out)``; ``held_out`` has ``fraction`` of each class.

    Deterministic in ``seed``; each class keeps at least one sample on each side when
    it has two or more.
    """
    rng = np.random.default_rng(seed)
    keep, held = [], []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        idx = idx[rng.permutation(len(idx))]
        n_held = int(round(fraction * len(idx)))
        if fraction > 0 and len(idx) >= 2:
            n_held = min(max(n_held, 1), len(idx) - 1)
        held.append(idx[:n_held])
        keep.append(idx[n_held:])
    return np.sort(np.concatenate(keep)), np.sort(np.concatenate(held))


def take_per_class(split: Split, n: int, seed: int = 0) -> Split:
    """The first ``n`` samples of each class after a seeded shuffle (few-shot)."""
    y = split.y.numpy()
    rng = np.random.default_rng(seed + 7919)
    chosen = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        idx = idx[rng.permutation(len(idx))][:n]
        chosen.append(idx)
    return split.subset(np.sort(np.concatenate(chosen)))


def standardize(train: Tensor, *others: Tensor | None) -> tuple[Tensor, ...]:
    """Per-channel standardisation with the training split's statistics."""
    dims = [0, 2, 3] if train.dim() == 4 else [0]
    mean = train.mean(dim=dims, keepdim=True)
    std = train.std(dim=dims, keepdim=True).clamp_min(1e-6)
    out = [(train - mean) / std]
    out += [None if o is None else (o - mean) / std for o in others]
    return tuple(out)  # type: ignore[arg-type]


def check_bundle(bundle: DataBundle, source: str = "dataset") -> None:
    """Check what every dataset must satisfy before training: non-empty float inputs
    with ``in_channels`` channels, finite values, integer labels in ``[0, num_classes)``.

    Raises DataError naming the split and what is wrong; cheap for in-memory splits and
    for streaming ones (labels, and two decoded samples).
    """
    if not isinstance(bundle.num_classes, int) or bundle.num_classes < 1:
        raise DataError(
            f"{source}: num_classes must be a positive integer, got {bundle.num_classes!r}"
        )
    splits = {"train": bundle.train, "val": bundle.val, "test": bundle.test}
    for name, split in splits.items():
        if split is None:
            if name == "val":
                continue
            raise DataError(f"{source}: the {name} split is missing")
        where = f"{source} ({name} split)"
        # Streaming splits: only a couple of decoded samples (reading them all is a run).
        x = split.x if isinstance(split, TensorSplit) else split.example(2)
        if not x.is_floating_point():
            raise DataError(f"{where}: inputs must be floating point, got {x.dtype}")
        if x.dim() == 4 and x.shape[1] != bundle.in_channels:
            raise DataError(
                f"{where}: images have shape {tuple(x.shape)}, expected "
                f"{bundle.in_channels} channels in dimension 1 (N, C, H, W)"
            )
        check_labels(split.y, bundle.num_classes, where)
        check_finite(x, where)
