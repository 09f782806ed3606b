"""In-memory splits and the bundle a dataset builder returns."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch
from torch import Tensor

from kdlab.errors import DataError
from kdlab.inputs import PLAIN, Inputs, describe, head, map_inputs, named, take

if TYPE_CHECKING:
    from kdlab.config import DataConfig


@dataclass
class TensorSplit:
    """A split held as tensors: ``x`` float (N, C, H, W) images, (N, C, L) sequences,
    (N, D) feature vectors, integer (N, L) token ids, or a dict of named tensors passed
    to the model as keyword arguments (``input_ids``, ``attention_mask``, ...: see
    :mod:`kdlab.inputs`); ``y`` long (N,)."""

    x: Inputs
    y: Tensor

    def __post_init__(self) -> None:
        tensors = named(self.x)
        if not tensors or any(t.dim() < 1 for t in tensors.values()) or self.y.dim() != 1:
            raise DataError(
                f"inputs need a sample dimension and labels must be 1-D, got inputs "
                f"{describe(self.x) if tensors else 'none'} and labels {tuple(self.y.shape)}"
            )
        for name, t in tensors.items():
            if t.shape[0] != self.y.shape[0]:
                what = "inputs" if name == PLAIN else f"{name!r} rows"
                raise DataError(f"{t.shape[0]} {what} but {self.y.shape[0]} labels")

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def __getitem__(self, i: int) -> tuple[Inputs, Tensor, int]:
        return map_inputs(self.x, lambda t: t[i]), self.y[i], i

    def example(self, n: int) -> Inputs:
        """The first ``n`` inputs (shape probes); every kind of split offers this."""
        return head(self.x, n)

    def subset(self, idx: Tensor | np.ndarray) -> TensorSplit:
        idx_t = torch.as_tensor(np.asarray(idx), dtype=torch.long)
        return TensorSplit(take(self.x, idx_t), self.y[idx_t])


class Split(Protocol):
    """What the engine may assume of any split, in memory or streamed from disk."""

    y: Tensor

    def __len__(self) -> int: ...

    def example(self, n: int) -> Inputs: ...

    def subset(self, idx: Tensor | np.ndarray) -> Split: ...


def held_in_memory(split: Split, purpose: str) -> TensorSplit:
    """``split`` itself when its tensors are in memory; a DataError naming ``purpose``
    when it is streamed from disk (what needs every input at once cannot run on it)."""
    if isinstance(split, TensorSplit):
        return split
    raise DataError(
        f"{purpose} needs the dataset's images in memory, but this split is streamed from "
        "disk batch by batch; hold it in memory (dataset 'imagenet': data.options.stream: "
        "false with train_transform: eval) or use a smaller dataset"
    )


@dataclass
class DataBundle:
    """Train / val / test splits plus what models need to know about the inputs."""

    train: Split
    val: Split | None
    test: Split
    num_classes: int
    in_channels: int
    image_size: tuple[int, ...]  # (H, W) of images, (L,) of sequences, (1, 1) for vectors
    name: str = ""
    extra: dict[str, object] = field(default_factory=dict)


def data_root(cfg: DataConfig, expects: str) -> Path:
    """``data.root`` as a path, or a DataError naming the dataset and what the root must
    hold (``expects``) when the recipe gives none."""
    if cfg.root is None:
        raise DataError(f"dataset {cfg.name!r} needs data.root: {expects}")
    return Path(cfg.root).expanduser()


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


def _show(values: Any, limit: int = 8) -> str:
    values = list(values)
    shown = ", ".join(str(v) for v in values[:limit])
    return shown + (f", ... ({len(values)} in all)" if len(values) > limit else "")


def encode_labels(
    labelled: Sequence[tuple[np.ndarray, str]],
    num_classes: Any = None,
    label_map: Any = None,
) -> tuple[list[np.ndarray], int, dict[Any, int] | None]:
    """Class indices for label arrays ``[(training labels, source), (other, source)...]``.

    Without ``label_map`` the labels are the class indices (integers >= 0). With no
    ``num_classes`` either, the class count is the largest label + 1 and must be
    honest: every class in ``[0, K)`` occurs in the training labels, and every label of
    the other arrays occurs there too; otherwise a DataError names the labels (a test
    label the training set lacks, or sparse ids 0, 1000, 2000, would silently widen the
    classifier). ``num_classes`` states the count (classes may then be absent).
    ``label_map`` is ``"sorted"`` (the training labels' distinct values, in sorted
    order, become 0..K-1), a list (its i-th entry becomes class i) or a mapping
    ``{label: index}``; labels may then be any values (e.g. strings), and a label it
    does not map is an error. Returns the int64 arrays, the class count and the map.
    """
    if num_classes is not None and (
        not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1
    ):
        raise DataError(f"data.options.num_classes must be a positive integer, got {num_classes!r}")
    for y, source in labelled:
        if y.size == 0:
            raise DataError(f"{source}: no samples")
    mapping = None if label_map is None else _label_mapping(label_map, labelled[0][0])
    if mapping is None:
        for y, source in labelled:
            if not np.issubdtype(y.dtype, np.integer):
                raise DataError(
                    f"{source}: labels must be integers, got dtype {y.dtype} (or give "
                    "data.options.label_map to number them)"
                )
            if int(y.min()) < 0:
                raise DataError(f"{source}: labels must be >= 0, found {int(y.min())}")
        if num_classes is None:
            num_classes = _honest_class_count(labelled)
        out = [y.astype(np.int64) for y, _ in labelled]
    else:
        out = [_apply_mapping(y, mapping, source) for y, source in labelled]
        top = max(mapping.values()) + 1
        if num_classes is not None and num_classes < top:
            raise DataError(
                f"data.options.num_classes is {num_classes}, but data.options.label_map "
                f"numbers classes up to {top - 1}"
            )
        num_classes = num_classes or top
    for y, (_, source) in zip(out, labelled):
        check_labels(y, num_classes, source)
    return out, num_classes, mapping


def _honest_class_count(labelled: Sequence[tuple[np.ndarray, str]]) -> int:
    train, train_src = labelled[0]
    seen = np.unique(train)
    for y, source in labelled[1:]:
        new = np.setdiff1d(np.unique(y), seen)
        if len(new):
            raise DataError(
                f"{source}: label(s) {_show(new)} never occur in the training labels "
                f"({_show(seen)}); a class the training set lacks would silently widen the "
                "classifier. Set data.options.num_classes if the model should have classes "
                "it never trains on, or data.options.label_map to number the labels"
            )
    top = int(seen[-1]) + 1
    if len(seen) != top:
        missing = np.setdiff1d(np.arange(top), seen)
        raise DataError(
            f"{train_src}: the labels are not the classes 0..{top - 1}: {_show(missing)} "
            f"never occur (found {len(seen)} distinct labels: {_show(seen)}). Set "
            f"data.options.label_map: sorted to number them 0..{len(seen) - 1}, or "
            f"data.options.num_classes: {top} to keep the ids as classes"
        )
    return top


def _label_mapping(label_map: Any, train: np.ndarray) -> dict[Any, int]:
    if label_map == "sorted":
        return {v.item(): i for i, v in enumerate(np.unique(train))}
    if isinstance(label_map, (list, tuple)):
        try:
            mapping = {v: i for i, v in enumerate(label_map)}
        except TypeError:  # a nested list or mapping as a label
            mapping = {}
        if not mapping or len(mapping) != len(label_map):
            raise DataError(
                "data.options.label_map: a list needs one entry per class, each a label "
                f"(a number or a string) given once, got {label_map!r}"
            )
        return mapping
    if isinstance(label_map, Mapping):
        bad = [
            v for v in label_map.values() if not isinstance(v, int) or isinstance(v, bool) or v < 0
        ]
        if bad or not label_map:
            raise DataError(
                "data.options.label_map: a mapping's values must be class indices (integers "
                f">= 0), got {_show(bad) if bad else 'an empty mapping'}"
            )
        return dict(label_map)
    raise DataError(
        "data.options.label_map must be 'sorted', a list of labels (the i-th is class i) "
        f"or a mapping {{label: class index}}, got {label_map!r}"
    )


def _apply_mapping(y: np.ndarray, mapping: dict[Any, int], source: str) -> np.ndarray:
    values, inverse = np.unique(y, return_inverse=True)
    codes = np.array([mapping.get(v.item(), -1) for v in values], dtype=np.int64)
    unmapped = values[codes < 0]
    if len(unmapped):
        raise DataError(
            f"{source}: label(s) {_show(unmapped.tolist())} are not in data.options.label_map "
            f"(it maps {_show(mapping)})"
        )
    return codes[inverse.reshape(-1)]


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


ArrayInputs = np.ndarray | dict[str, np.ndarray]  # one array, or named arrays (kdlab.inputs)


def _rows(x: ArrayInputs, idx: np.ndarray | None = None) -> Inputs:
    """Arrays as tensors (rows ``idx``); float arrays are float32, integer ones int64."""

    def one(a: np.ndarray) -> Tensor:
        a = a if idx is None else a[idx]
        dtype = np.float32 if np.issubdtype(a.dtype, np.floating) else None
        if np.issubdtype(a.dtype, np.integer):
            dtype = np.int64
        return torch.from_numpy(np.ascontiguousarray(a, dtype=dtype))

    return {k: one(v) for k, v in x.items()} if isinstance(x, dict) else one(x)


def split_labelled(
    cfg: Any,
    x: ArrayInputs,
    y: np.ndarray,
    test: tuple[ArrayInputs, np.ndarray] | None,
    sources: tuple[str, str],
    options: Mapping[str, Any],
) -> tuple[TensorSplit, TensorSplit | None, TensorSplit, int, dict[Any, int] | None]:
    """Train / val / test splits of labelled arrays, as every file dataset makes them.

    Labels go through :func:`encode_labels` (``options``' ``num_classes`` and
    ``label_map``); without ``test`` a stratified test split of ``cfg.test_fraction`` is
    carved, then validation (``cfg.val_fraction``) from the rest, both seeded by
    ``cfg.split_seed``. A plain float input is standardised with the training split's
    statistics when ``cfg.normalize``; named inputs (token ids, masks) are kept as they
    are. ``sources`` name the label arrays in errors. Returns the splits, the class count
    and the label map.
    """
    labelled = [(y, sources[0])] + ([] if test is None else [(test[1], sources[1])])
    encoded, num_classes, mapping = encode_labels(
        labelled, options.get("num_classes"), options.get("label_map")
    )
    y = encoded[0]
    if test is not None:
        x_test, y_test = test[0], encoded[1]
        rest = np.arange(len(y))
    else:
        rest, test_idx = stratified_split(y, cfg.test_fraction, cfg.split_seed)
        x_test, y_test = x, y[test_idx]
    train_idx, val_idx = stratified_split(y[rest], cfg.val_fraction, cfg.split_seed + 1)
    train_idx, val_idx = rest[train_idx], rest[val_idx]
    x_train, x_val = _rows(x, train_idx), _rows(x, val_idx)
    x_te = _rows(x_test) if test is not None else _rows(x, test_idx)
    if cfg.normalize and isinstance(x_train, Tensor) and x_train.is_floating_point():
        x_train, x_val, x_te = standardize(x_train, x_val, x_te)  # type: ignore[arg-type]
    yt = torch.from_numpy(y)
    return (
        TensorSplit(x_train, yt[train_idx]),
        TensorSplit(x_val, yt[val_idx]) if len(val_idx) else None,
        TensorSplit(x_te, torch.from_numpy(y_test)),
        num_classes,
        mapping,
    )


def named_inputs_bundle(
    cfg: Any,
    x: dict[str, np.ndarray],
    y: np.ndarray,
    test: tuple[dict[str, np.ndarray], np.ndarray] | None,
    sources: tuple[str, str],
    options: Mapping[str, Any],
    name: str,
    extra: dict[str, object],
) -> DataBundle:
    """The bundle of a file of named inputs (``input_ids``, masks...) and labels, split by
    :func:`split_labelled`: ``in_channels`` 1, ``image_size`` ``(L,)`` of ``input_ids``,
    ``extra`` with the input names and the label map."""
    train, val, test_split, num_classes, mapping = split_labelled(cfg, x, y, test, sources, options)
    return DataBundle(
        train=train,
        val=val,
        test=test_split,
        num_classes=num_classes,
        in_channels=1,
        image_size=(int(x["input_ids"].shape[1]),),
        name=name,
        extra={**extra, "inputs": list(x), "label_map": mapping},
    )


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
    """Per-channel (per-feature for (N, D)) standardisation with the training split's
    statistics."""
    dims = [0, *range(2, train.dim())]
    mean = train.mean(dim=dims, keepdim=True)
    std = train.std(dim=dims, keepdim=True).clamp_min(1e-6)
    out = [(train - mean) / std]
    out += [None if o is None else (o - mean) / std for o in others]
    return tuple(out)  # type: ignore[arg-type]


def check_inputs(x: Inputs, in_channels: int, where: str) -> None:
    """Inputs every model can take: finite floating-point tensors (a plain image or
    sequence tensor with ``in_channels`` channels in dimension 1), or integer / bool
    ``(N, L)`` tensors of token ids and masks, with no negative id."""
    for name, t in named(x).items():
        what = where if name == PLAIN else f"{where}, input {name!r}"
        if t.is_floating_point():
            if name == PLAIN and t.dim() in (3, 4) and t.shape[1] != in_channels:
                layout = "(N, C, H, W)" if t.dim() == 4 else "(N, C, L)"
                raise DataError(
                    f"{what}: inputs have shape {tuple(t.shape)}, expected "
                    f"{in_channels} channels in dimension 1 {layout}"
                )
            check_finite(t, what)
            continue
        if t.is_complex() or t.dim() != 2:
            raise DataError(
                f"{what}: inputs must be floating point, or integer token ids / masks of "
                f"shape (N, L); got {str(t.dtype).replace('torch.', '')} {tuple(t.shape)} "
                "(images and sequences must be converted to float)"
            )
        if t.dtype != torch.bool and t.numel() and int(t.min()) < 0:
            raise DataError(f"{what}: token ids must be >= 0, found {int(t.min())}")


def check_bundle(bundle: DataBundle, source: str = "dataset") -> None:
    """Check what every dataset must satisfy before training: non-empty inputs that
    :func:`check_inputs` accepts (float with ``in_channels`` channels, finite; or integer
    token ids and masks), integer labels in ``[0, num_classes)``.

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
        check_inputs(x, bundle.in_channels, where)
        check_labels(split.y, bundle.num_classes, where)
