"""Checked access to ``data.options`` (dataset-specific keys) for the dataset builders."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kdlab.errors import DataError, did_you_mean


def dataset_options(
    dataset: str, options: Mapping[str, Any], defaults: Mapping[str, Any]
) -> dict[str, Any]:
    """``defaults`` updated with ``options``; an unknown key is a DataError with a hint."""
    for key in options:
        if key not in defaults:
            valid = did_you_mean(str(key), defaults) if defaults else "it takes no options"
            raise DataError(f"data.options.{key}: not an option of dataset {dataset!r}; {valid}")
    return {**defaults, **options}
