"""Arrays from a NumPy ``.npz`` file: any labelled data a user already has in memory.

``data.root`` is the ``.npz`` file. It holds ``x`` and ``y`` and optionally ``x_test`` and
``y_test``; without them a stratified test split is carved (``data.test_fraction``). The
validation split is always carved from the training part (``data.val_fraction``), both
with ``data.split_seed``, as for digits.

Inputs, by ``data.options.layout`` (default: decided from the shape, or an error):

- ``(N, D)``: feature vectors, kept 2-D; the bundle reports ``in_channels = D`` and
  ``image_size = (1, 1)``, so ``mlp`` with ``in_channels=D, image_size=1`` fits them;
- ``nchw``: images ``(N, C, H, W)``; ``nhwc``: images stored channels-last
  ``(N, H, W, C)``, moved to ``(N, C, H, W)``. Without a layout, a 4-D array whose
  second axis is smaller than the other two is ``nchw``, one whose last axis is, is
  ``nhwc``; any other (e.g. ``(N, 8, 8, 8)``) is refused: set the layout;
- ``nhw``: grey images ``(N, H, W)`` -> ``(N, 1, H, W)`` (the default for a 3-D array
  with square ``H == W``);
- ``ncl``: sequences ``(N, C, L)`` of C channels, kept 1-D: ``in_channels = C``,
  ``image_size = (L,)``. A 3-D array that is not square needs ``nhw`` or ``ncl``.

Inputs are cast to float32 and, with ``data.normalize``, standardised with the training
split's per-channel (per-feature for 2-D) mean and std; they must be finite.

Token ids (text, for models that take keyword inputs such as ``hf:`` transformers): a
file with ``input_ids`` instead of ``x`` holds named inputs, each passed to the model
as a keyword: ``input_ids`` (integer ``(N, L)``), and any others beside it such as
``attention_mask`` and ``token_type_ids``; every array but ``y`` is an input. A test
split gives each a ``_test`` twin (``input_ids_test``, ``attention_mask_test``, ...)
and ``y_test``. Integer arrays stay integers (int64), nothing is standardised, and no
layout applies. See docs/text.md.

Labels (``y``, ``y_test``) are class indices, integers from 0: the class count is the
largest + 1, and every class must occur in ``y`` and every ``y_test`` label in ``y``, or
the error names the labels. ``data.options.num_classes`` fixes the count (for classes
absent from the file); ``data.options.label_map`` numbers other labels: ``sorted`` (the
distinct labels of ``y`` in sorted order become 0..K-1, e.g. sparse ids 0, 1000, 2000 or
strings), a list (its i-th entry is class i) or a mapping ``{label: index}``.
The file is read with ``allow_pickle=False``: it can hold arrays only, never code.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from kdlab.config import DataConfig
from kdlab.data import options_for, register_dataset
from kdlab.data.base import DataBundle, check_finite, data_root, named_inputs_bundle, split_labelled
from kdlab.errors import DataError

LAYOUTS = {"nchw": 4, "nhwc": 4, "nhw": 3, "ncl": 3}


def _layout(shape: tuple[int, ...], given: Any, source: str) -> str:
    """The layout of an input array of ``shape``: ``given``, or what the shape says."""
    if given is not None:
        if given not in LAYOUTS:
            raise DataError(
                f"data.options.layout must be one of {', '.join(LAYOUTS)}, got {given!r}"
            )
        if len(shape) != LAYOUTS[given]:
            raise DataError(
                f"{source}: data.options.layout {given!r} needs a {LAYOUTS[given]}-D array, "
                f"got shape {shape}"
            )
        return str(given)
    if len(shape) == 2:
        return "nd"
    if len(shape) == 4:
        a, b, c = shape[1:]
        if a < min(b, c):
            return "nchw"
        if c < min(a, b):
            return "nhwc"
        raise DataError(
            f"{source}: cannot tell the channel axis of shape {shape}: set "
            "data.options.layout to 'nchw' (N, C, H, W) or 'nhwc' (N, H, W, C)"
        )
    if len(shape) == 3:
        if shape[1] == shape[2]:
            return "nhw"
        raise DataError(
            f"{source}: a 3-D array of shape {shape} may be grey images or sequences: set "
            "data.options.layout to 'nhw' (N, H, W) images or 'ncl' (N, C, L) sequences"
        )
    raise DataError(
        f"{source}: inputs must have shape (N, D), (N, H, W), (N, C, L), (N, C, H, W) or "
        f"(N, H, W, C), got {shape}"
    )


def _inputs(x: np.ndarray, layout: str, source: str) -> np.ndarray:
    """Inputs as float32 ``(N, D)``, ``(N, C, L)`` or ``(N, C, H, W)``."""
    if x.dtype == object or not (
        np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.bool_)
    ):
        raise DataError(f"{source}: inputs must be numeric, got dtype {x.dtype}")
    if layout == "nhw":
        x = x[:, None]
    elif layout == "nhwc":
        x = x.transpose(0, 3, 1, 2)
    x = np.ascontiguousarray(x, dtype=np.float32)
    check_finite(x, source)
    return x


def _labels(y: np.ndarray, n: int, source: str) -> np.ndarray:
    if y.ndim != 1:
        raise DataError(f"{source}: labels must be 1-D, got shape {y.shape}")
    if y.shape[0] != n:
        raise DataError(f"{source}: {n} inputs but {y.shape[0]} labels")
    if y.size and np.issubdtype(y.dtype, np.floating) and np.all(np.mod(y, 1) == 0):
        y = y.astype(np.int64)  # integral floats (e.g. saved from a float tensor) are fine
    return y


@register_dataset("npz", options={"layout": None, "num_classes": None, "label_map": None})
def npz(cfg: DataConfig) -> DataBundle:
    """Train/val/test splits from the arrays in the ``.npz`` file ``data.root``."""
    opts = options_for(cfg)
    path = data_root(
        cfg, "the path of an .npz file with arrays x, y (and optionally x_test, y_test)"
    )
    if not path.is_file():
        raise DataError(f"data.root {str(path)!r}: no such .npz file")
    try:
        loaded = np.load(path, allow_pickle=False)
        if not hasattr(loaded, "files"):  # a .npy array under an .npz name
            raise ValueError(f"it holds one array of shape {np.shape(loaded)}, not named arrays")
        with loaded as f:
            arrays = {k: f[k] for k in f.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:  # EOFError: empty file
        raise DataError(f"{path}: not a readable .npz file of plain arrays ({err})") from None
    if "x" not in arrays and "input_ids" in arrays:
        return _token_bundle(cfg, opts, path, arrays)
    for key in ("x", "y"):
        if key not in arrays:
            raise DataError(
                f"{path}: no array {key!r} (found {sorted(arrays)}); need x and y, or "
                "input_ids and y for token ids"
            )
    if ("x_test" in arrays) != ("y_test" in arrays):
        raise DataError(f"{path}: x_test and y_test must be given together")

    layout = _layout(arrays["x"].shape, opts["layout"], f"{path}[x]")
    x = _inputs(arrays["x"], layout, f"{path}[x]")
    y = _labels(arrays["y"], x.shape[0], f"{path}[y]")
    test = None
    if "x_test" in arrays:
        if arrays["x_test"].shape[1:] != arrays["x"].shape[1:]:
            raise DataError(
                f"{path}: x_test samples have shape {arrays['x_test'].shape[1:]}, x samples "
                f"{arrays['x'].shape[1:]}"
            )
        x_test = _inputs(arrays["x_test"], layout, f"{path}[x_test]")
        test = (x_test, _labels(arrays["y_test"], x_test.shape[0], f"{path}[y_test]"))
    train, val, test_split, num_classes, mapping = split_labelled(
        cfg, x, y, test, (f"{path}[y]", f"{path}[y_test]"), opts
    )
    features = x.ndim == 2
    return DataBundle(
        train=train,
        val=val,
        test=test_split,
        num_classes=num_classes,
        in_channels=x.shape[1],
        image_size=(1, 1) if features else tuple(x.shape[2:]),
        name="npz",
        extra={"root": str(path), "features": features, "layout": layout, "label_map": mapping},
    )


def _token_bundle(
    cfg: DataConfig, opts: dict[str, Any], path: Path, arrays: dict[str, np.ndarray]
) -> DataBundle:
    """Named inputs (``input_ids``, ``attention_mask``, ...) for models taking keywords."""
    if opts["layout"] is not None:
        raise DataError(
            f"{path}: data.options.layout applies to an array x; this file holds token ids "
            "(input_ids), which need no layout: remove the option"
        )
    if "y" not in arrays:
        raise DataError(f"{path}: no array 'y' (found {sorted(arrays)}); need input_ids and y")
    names = [k for k in arrays if k != "y" and not k.endswith("_test")]
    found = sorted(k for k in arrays if k.endswith("_test"))
    wanted = sorted([f"{k}_test" for k in names] + ["y_test"])
    if found and found != wanted:
        raise DataError(
            f"{path}: a test split needs every input with a _test twin and y_test: "
            f"expected {wanted}, found {found}"
        )
    x = {k: _token_input(arrays[k], f"{path}[{k}]") for k in names}
    n = x["input_ids"].shape[0]
    for k, v in x.items():
        if v.shape[0] != n:
            raise DataError(f"{path}: {n} rows of input_ids but {v.shape[0]} of {k}")
    y = _labels(arrays["y"], n, f"{path}[y]")
    test = None
    if "y_test" in arrays:
        x_test = {k: _token_input(arrays[f"{k}_test"], f"{path}[{k}_test]") for k in names}
        n_test = x_test["input_ids"].shape[0]
        if any(v.shape[0] != n_test for v in x_test.values()):
            raise DataError(f"{path}: the _test inputs have different numbers of rows")
        test = (x_test, _labels(arrays["y_test"], n_test, f"{path}[y_test]"))
    sources = (f"{path}[y]", f"{path}[y_test]")
    return named_inputs_bundle(cfg, x, y, test, sources, opts, "npz", {"root": str(path)})


def _token_input(a: np.ndarray, source: str) -> np.ndarray:
    """A named input array: integer or bool ``(N, L)`` (ids, masks) or float (kept)."""
    if np.issubdtype(a.dtype, np.integer) or a.dtype == np.bool_:
        if a.ndim != 2:
            raise DataError(f"{source}: token ids and masks must be 2-D (N, L), got {a.shape}")
        return a
    if np.issubdtype(a.dtype, np.floating):
        check_finite(a, source)
        return a
    raise DataError(f"{source}: inputs must be numeric, got dtype {a.dtype}")
