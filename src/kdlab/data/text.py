"""Text classification data from local files through Hugging Face ``datasets``.

``data.name: text`` with ``data.root`` one file (``.parquet``, ``.csv``, ``.json`` or
``.jsonl``: a test split is then carved, ``data.test_fraction``) or a folder holding
``train.<ext>`` and optionally ``test.<ext>``. Validation is carved from the training
part (``data.val_fraction``), all with ``data.split_seed``, as for every file dataset.
Needs ``pip install 'kdlab[text]'`` (and ``kdlab[hf]`` to tokenise).

Columns (``data.options``):

- ``text`` (default ``text``) and optionally ``text_pair`` (sentence pairs): tokenised
  with ``tokenizer``, a local tokenizer folder (``save_pretrained``) or ``hf:FOLDER``, the
  folder of a saved ``hf:`` model; padded to the longest sample of all splits, truncated
  at ``max_length`` (default 128);
- or, when the text column is absent, pre-tokenised columns of integer lists: ``inputs``
  (default: those of ``input_ids``, ``attention_mask``, ``token_type_ids`` present),
  padded to the longest with ``pad_id`` (default 0); an ``attention_mask`` is added
  (1 on real tokens) when the file has none;
- ``label`` (default ``label``): integers from 0, or any values with ``label_map`` (and
  ``num_classes``), as for :mod:`kdlab.data.npz`.

The batches are dicts of int64 ``(N, L)`` tensors passed to the model as keyword
arguments (:mod:`kdlab.inputs`). Nothing is downloaded: ``HF_DATASETS_OFFLINE`` and
``HF_HUB_OFFLINE`` are set before ``datasets`` is imported, paths must be local, the
tokenizer is loaded with ``local_files_only=True``, and the file's table is read into
memory through a temporary cache that is removed afterwards.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from kdlab.config import DataConfig
from kdlab.data import options_for, register_dataset
from kdlab.data.base import DataBundle, data_root, named_inputs_bundle
from kdlab.errors import DataError

FORMATS = {".parquet": "parquet", ".csv": "csv", ".json": "json", ".jsonl": "json"}
TOKEN_COLUMNS = ("input_ids", "attention_mask", "token_type_ids")
OPTIONS = {
    "text": "text",
    "text_pair": None,
    "label": "label",
    "tokenizer": None,
    "max_length": 128,
    "inputs": None,
    "pad_id": 0,
    "num_classes": None,
    "label_map": None,
}


def _datasets() -> Any:
    # Offline before the import: datasets reads these once, when it is imported.
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import datasets  # noqa: PLC0415 - optional extra, slow to import
    except ImportError as err:
        raise DataError(
            f"dataset 'text' reads files through Hugging Face datasets, which is not "
            f"importable here ({err}); install the extra: pip install 'kdlab[text]'"
        ) from None
    return datasets


def _files(root: Path) -> dict[str, Path]:
    """``{"train": file, "test": file?}`` from ``data.root``."""
    if root.is_file():
        if root.suffix not in FORMATS:
            raise DataError(
                f"data.root {str(root)!r}: not a {', '.join(FORMATS)} file (the format "
                "follows the suffix)"
            )
        return {"train": root}
    if not root.is_dir():
        raise DataError(f"data.root {str(root)!r}: no such file or folder")
    found = {
        split: [root / f"{split}{ext}" for ext in FORMATS if (root / f"{split}{ext}").is_file()]
        for split in ("train", "test")
    }
    for split, paths in found.items():
        if len(paths) > 1:
            raise DataError(f"data.root {str(root)!r}: several {split} files {paths}; keep one")
    if not found["train"]:
        raise DataError(
            f"data.root {str(root)!r}: no train file (train.parquet, train.csv, train.json "
            "or train.jsonl)"
        )
    return {split: paths[0] for split, paths in found.items() if paths}


def _read(path: Path) -> dict[str, list[Any]]:
    """A file's table as ``{column: values}``, read locally into memory."""
    datasets = _datasets()
    quiet = datasets.utils.are_progress_bars_disabled()
    datasets.disable_progress_bars()  # a bar per file read in memory is noise in a run's log
    with tempfile.TemporaryDirectory(prefix="kdlab-text-") as cache:
        try:
            table = datasets.load_dataset(
                FORMATS[path.suffix],
                data_files=str(path),
                split="train",
                cache_dir=cache,
                keep_in_memory=True,
            )
        except Exception as err:  # a malformed file: datasets raises many kinds
            raise DataError(
                f"{path}: cannot be read as {FORMATS[path.suffix]} ({type(err).__name__}: "
                f"{str(err).splitlines()[0] if str(err) else ''})"
            ) from None
        finally:
            if not quiet:
                datasets.enable_progress_bars()
        return table.to_dict()


def _tokenizer(spec: Any) -> Any:
    if not isinstance(spec, str) or not spec:
        raise DataError(
            "data.options.tokenizer: a text column is tokenised with a local tokenizer "
            "folder (saved with save_pretrained) or hf:FOLDER of a saved model; got "
            f"{spec!r}"
        )
    path = Path(spec.removeprefix("hf:")).expanduser()
    if not path.is_dir():
        raise DataError(
            f"data.options.tokenizer {spec!r}: no such folder; kdlab never downloads a "
            "tokenizer: save it with save_pretrained and name that folder"
        )
    try:
        import transformers  # noqa: PLC0415 - optional extra
    except ImportError as err:
        raise DataError(
            f"data.options.tokenizer needs transformers ({err}): pip install 'kdlab[hf]'"
        ) from None
    try:
        return transformers.AutoTokenizer.from_pretrained(
            str(path), local_files_only=True, trust_remote_code=False
        )
    except (OSError, ValueError) as err:
        raise DataError(
            f"data.options.tokenizer {spec!r}: no tokenizer could be loaded from the folder "
            f"({str(err).splitlines()[0] if str(err) else type(err).__name__})"
        ) from None


def _column(table: dict[str, list[Any]], name: str, path: Path, what: str) -> list[Any]:
    if name not in table:
        raise DataError(
            f"{path}: no {what} column {name!r}; the file has columns {sorted(table)} "
            f"(set data.options.{what})"
        )
    return table[name]


def _tokenise(
    tables: dict[str, dict[str, list[Any]]], opts: dict[str, Any], paths: dict[str, Path]
) -> dict[str, dict[str, np.ndarray]]:
    """Every split's text tokenised in one call, so all share the padded length."""
    tok = _tokenizer(opts["tokenizer"])
    max_length = opts["max_length"]
    if not isinstance(max_length, int) or isinstance(max_length, bool) or max_length < 1:
        raise DataError(f"data.options.max_length must be an integer >= 1, got {max_length!r}")
    texts, pairs, counts = [], [], {}
    for split, table in tables.items():
        col = _column(table, opts["text"], paths[split], "text")
        texts += [str(t) for t in col]
        if opts["text_pair"] is not None:
            pairs += [str(t) for t in _column(table, opts["text_pair"], paths[split], "text_pair")]
        counts[split] = len(col)
    encoded = tok(
        texts,
        pairs or None,
        padding="longest",
        truncation=True,
        max_length=max_length,
        return_tensors="np",
    )
    out, start = {}, 0
    for split, n in counts.items():
        out[split] = {k: np.asarray(v[start : start + n]) for k, v in encoded.items()}
        start += n
    return out


def _pretokenised(
    tables: dict[str, dict[str, list[Any]]], opts: dict[str, Any], paths: dict[str, Path]
) -> dict[str, dict[str, np.ndarray]]:
    """Integer-list columns padded to the longest row of all splits."""
    first = next(iter(tables.values()))
    names = opts["inputs"] or [c for c in TOKEN_COLUMNS if c in first]
    if "input_ids" not in names:
        raise DataError(
            f"{paths['train']}: no text column {opts['text']!r} to tokenise and no input_ids "
            f"column; the file has columns {sorted(first)} (set data.options.text, or "
            "data.options.inputs to pre-tokenised columns)"
        )
    rows = {
        split: {k: _column(table, k, paths[split], "inputs") for k in names}
        for split, table in tables.items()
    }
    length = max(len(r) for split in rows.values() for col in split.values() for r in col)
    pad = opts["pad_id"]
    out = {}
    for split, cols in rows.items():
        arrays = {}
        for k, col in cols.items():
            arr = np.full((len(col), length), pad if k == "input_ids" else 0, dtype=np.int64)
            for i, r in enumerate(col):
                try:
                    arr[i, : len(r)] = r
                except (TypeError, ValueError):
                    raise DataError(
                        f"{paths[split]}: column {k!r}, row {i}: expected a list of integers, "
                        f"got {r!r}"
                    ) from None
            arrays[k] = arr
        if "attention_mask" not in arrays:
            lengths = np.array([len(r) for r in cols["input_ids"]])
            arrays["attention_mask"] = (np.arange(length) < lengths[:, None]).astype(np.int64)
        out[split] = arrays
    return out


@register_dataset("text", options=OPTIONS)
def text(cfg: DataConfig) -> DataBundle:
    """Token inputs and labels from local parquet / csv / json files (module docstring)."""
    opts = options_for(cfg)
    paths = _files(
        data_root(
            cfg,
            "a .parquet, .csv or .json(l) file, or a folder "
            "with train.<ext> and optionally test.<ext>",
        )
    )
    tables = {split: _read(path) for split, path in paths.items()}
    tokenise = opts["text"] in tables["train"]
    inputs = (_tokenise if tokenise else _pretokenised)(tables, opts, paths)
    labels = {
        split: np.asarray(_column(table, opts["label"], paths[split], "label"))
        for split, table in tables.items()
    }
    test = (inputs["test"], labels["test"]) if "test" in tables else None
    sources = (f"{paths['train']}[{opts['label']}]", f"{paths.get('test')}[{opts['label']}]")
    tokenizer = opts["tokenizer"] if tokenise else None
    extra: dict[str, object] = {"root": str(cfg.root), "tokenizer": tokenizer}
    return named_inputs_bundle(
        cfg, inputs["train"], labels["train"], test, sources, opts, "text", extra
    )
