"""Property-based tests: generated configs, overrides and arrays give kdlab errors only.

Whatever a user writes in a recipe, on the command line or in a data file, kdlab must
either accept it or raise a :class:`~kdlab.errors.KdlabError` naming the problem, never
a raw ``KeyError``/``TypeError``/``AttributeError`` traceback. The counters in
``TRIED`` record how many generated inputs each property saw (printed with ``-s``).
"""

from __future__ import annotations

import copy
import math
from collections import Counter
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from pydantic import BaseModel

from kdlab.config import RunConfig, apply_overrides, load_config
from kdlab.data import build_dataset
from kdlab.data.base import DataBundle, TensorSplit, check_bundle, check_finite, check_labels
from kdlab.errors import KdlabError
from kdlab.methods import build_terms
from kdlab.views import build_views

TRIED: Counter[str] = Counter()
FAST = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,  # the same inputs every run: CI is reproducible
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _field_names(model: type[BaseModel], seen: set[str]) -> None:
    for name, field in model.model_fields.items():
        seen.add(name)
        for arg in [field.annotation, *getattr(field.annotation, "__args__", ())]:
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                _field_names(arg, seen)


_NAMES: set[str] = set()
_field_names(RunConfig, _NAMES)
KEYS = sorted(_NAMES | {"method", "type", "T", "sigma", "losses", "0", "1", "kd", "ce"})
NAMES = ["digits", "cnn_tiny", "cnn_small", "ce", "kd", "logits", "gaussian_noise", "os.system"]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(NAMES),
    st.text(max_size=8),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=6)), inner, max_size=4),
    ),
    max_leaves=12,
)
configs = st.dictionaries(st.sampled_from(KEYS), values, max_size=6)

BASE: dict[str, Any] = {
    "student": {"name": "cnn_tiny"},
    "teacher": {"name": "cnn_small"},
    "distill": {
        "terms": [{"method": "ce", "weight": 0.1}, {"method": "kd", "T": 4.0}],
        "views": {"noisy": {"type": "gaussian_noise", "sigma": 0.1}},
    },
    "train": {"epochs": 2, "optimizer": {"lr": 0.1}},
}


def _only_kdlab_errors(data: Any, overrides: tuple[str, ...] | list[str] = ()) -> None:
    """Load (and build what needs no data); only KdlabError may escape."""
    try:
        cfg = load_config(data, overrides)
        build_terms(cfg.distill.terms)
        build_views(cfg.distill.views)
    except KdlabError as err:
        assert str(err), "a kdlab error must carry a message"


def _set_path(data: dict[str, Any], path: list[str], value: Any) -> dict[str, Any]:
    node: Any = data
    for key in path[:-1]:
        child = node.get(key) if isinstance(node, dict) else None
        if not isinstance(child, dict):
            child = {}
            node[key] = child
        node = child
    node[path[-1]] = value
    return data


@FAST
@given(configs)
def test_generated_configs_raise_only_kdlab_errors(data: dict[str, Any]) -> None:
    TRIED["configs"] += 1
    _only_kdlab_errors(data)


@FAST
@given(st.lists(st.sampled_from(KEYS), min_size=1, max_size=4), values)
def test_valid_recipe_with_one_generated_value(path: list[str], value: Any) -> None:
    """A good recipe with one key set to anything (the usual user slip)."""
    TRIED["mutated recipes"] += 1
    _only_kdlab_errors(_set_path(copy.deepcopy(BASE), path, value))


override_keys = st.lists(
    st.one_of(st.sampled_from(KEYS), st.text(max_size=4), st.integers(-3, 5).map(str)),
    min_size=1,
    max_size=4,
).map(".".join)
override_values = st.one_of(
    st.text(max_size=12),
    st.sampled_from(["", "[", "{a: 1", "!!python/object:os.system", "1e999", ".nan", "[1, 2]"]),
    scalars.map(str),
)


@FAST
@given(st.lists(st.tuples(override_keys, override_values).map("=".join), max_size=4))
def test_generated_overrides_raise_only_kdlab_errors(overrides: list[str]) -> None:
    TRIED["override lists"] += 1
    _only_kdlab_errors(BASE, overrides)


@FAST
@given(st.lists(st.text(max_size=16), max_size=3))
def test_arbitrary_override_text(overrides: list[str]) -> None:
    TRIED["override texts"] += 1
    try:
        apply_overrides(BASE, overrides)
    except KdlabError:
        pass


dtypes = st.one_of(
    hnp.floating_dtypes(),
    hnp.integer_dtypes(),
    hnp.unsigned_integer_dtypes(),
    hnp.boolean_dtypes(),
    hnp.complex_number_dtypes(),
)
arrays = hnp.arrays(dtypes, hnp.array_shapes(min_dims=0, max_dims=4, max_side=4))


@FAST
@given(arrays, arrays, st.integers(-1, 12))
def test_generated_arrays_raise_only_data_errors(x: np.ndarray, y: np.ndarray, k: int) -> None:
    """Arrays as a data file could hold them, through the checks every dataset passes."""
    TRIED["array pairs"] += 1
    try:
        check_finite(x, "x")
        check_labels(y, k, "y")
        # astype, not ascontiguousarray, which turns a 0-d array into a 1-d one
        xt = torch.from_numpy(x.astype(np.float32, order="C"))
        yt = torch.from_numpy(y.astype(np.int64, order="C"))
        split = TensorSplit(xt, yt)
        channels = int(xt.shape[1]) if xt.dim() == 4 else 1
        check_bundle(DataBundle(split, None, split, k, channels, (1, 1)), "generated")
    except KdlabError as err:
        assert str(err)
        return
    # Accepted: then it really is usable data.
    assert np.isfinite(x.astype(np.complex128)).all()
    assert y.ndim == 1 and len(y) == len(x) and 0 <= y.min() and y.max() < k


@FAST
@given(
    hnp.arrays(np.float32, st.tuples(st.integers(1, 6), st.just(1), st.just(2), st.just(2))),
    st.integers(1, 4),
)
def test_non_finite_inputs_are_refused(x: np.ndarray, k: int) -> None:
    TRIED["float batches"] += 1
    y = torch.arange(len(x)) % k
    bundle = DataBundle(
        TensorSplit(torch.from_numpy(x), y), None, TensorSplit(torch.from_numpy(x), y), k, 1, (2, 2)
    )
    if all(math.isfinite(v) for v in x.ravel()):
        check_bundle(bundle)
    else:
        with pytest.raises(KdlabError, match="NaN or infinite"):
            check_bundle(bundle)


npz_arrays = hnp.arrays(
    st.one_of(hnp.floating_dtypes(), hnp.integer_dtypes(), hnp.boolean_dtypes()),
    hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5),
)


@st.composite
def nearly_valid_npz(draw: st.DrawFn) -> dict[str, np.ndarray]:
    """Usable arrays (features or images), then maybe one fault: a NaN, a bad label,
    a wrong length, a wrong rank, a missing or foreign array."""
    n = draw(st.integers(4, 24))
    shape = draw(st.sampled_from([(n, 3), (n, 5, 5), (n, 2, 3, 3)]))
    dtype = draw(st.sampled_from([np.float32, np.float64, np.int16, np.uint8]))
    x = draw(hnp.arrays(dtype, shape, elements={"min_value": 0, "max_value": 100}))
    k = draw(st.integers(1, 4))
    y = np.arange(n) % k
    arrays = {"x": x, "y": y}
    fault = draw(st.sampled_from(["none", "nan", "label", "length", "rank", "drop", "float y"]))
    if fault == "nan" and x.dtype.kind == "f":
        x.flat[draw(st.integers(0, x.size - 1))] = np.nan
    elif fault == "label":
        y[draw(st.integers(0, n - 1))] = draw(st.sampled_from([-1, 1000]))
    elif fault == "length":
        arrays["y"] = y[:-1]
    elif fault == "rank":
        arrays["x"] = x.reshape(-1)
    elif fault == "drop":
        arrays.pop(draw(st.sampled_from(["x", "y"])))
    elif fault == "float y":
        arrays["y"] = y + draw(st.sampled_from([0.0, 0.5]))
    if draw(st.booleans()):
        arrays["x_test"], arrays["y_test"] = arrays.get("x", x)[:4], np.arange(4) % k
    return arrays


@FAST
@given(
    st.one_of(
        nearly_valid_npz(),
        st.dictionaries(
            st.sampled_from(["x", "y", "x_test", "y_test", "z"]), npz_arrays, max_size=4
        ),
    ),
    st.one_of(st.none(), st.integers(-2, 12), st.text(max_size=3)),
    st.floats(0.0, 0.9),
)
def test_generated_npz_files_raise_only_kdlab_errors(
    tmp_path_factory: pytest.TempPathFactory, arrays: dict, classes: Any, val: float
) -> None:
    """Whatever arrays an .npz file holds, the npz dataset loads them or names the fault."""
    TRIED["npz files"] += 1
    path = tmp_path_factory.mktemp("npz") / "data.npz"
    np.savez(path, **arrays)
    options = {} if classes is None else {"num_classes": classes}
    cfg = load_config(
        {
            "student": {"name": "mlp"},
            "data": {"name": "npz", "root": str(path), "options": options, "val_fraction": val},
        }
    ).data
    try:
        bundle = build_dataset(cfg)
        check_bundle(bundle, "npz")
    except KdlabError as err:
        assert str(err)
        return
    assert len(bundle.train) > 0 and len(bundle.test) > 0
    TRIED["npz files accepted"] += 1


@FAST
@given(st.binary(max_size=64))
def test_garbage_npz_files(tmp_path_factory: pytest.TempPathFactory, blob: bytes) -> None:
    TRIED["garbage files"] += 1
    path = tmp_path_factory.mktemp("bad") / "data.npz"
    path.write_bytes(blob)
    with pytest.raises(KdlabError):
        build_dataset(
            load_config({"student": {"name": "x"}, "data": {"name": "npz", "root": str(path)}}).data
        )


def test_report_counts() -> None:
    """Runs last in this file: print how many generated inputs were tried."""
    tried = {k: v for k, v in TRIED.items() if "accepted" not in k}
    print(f"\ngenerated inputs tried: {dict(TRIED)}, total {sum(tried.values())}")
