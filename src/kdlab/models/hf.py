"""Hugging Face transformers as kdlab models: ``hf:SPEC`` (``pip install 'kdlab[hf]'``).

``SPEC`` is, in this order:

- a local folder written by ``save_pretrained`` (``config.json`` and safetensors weights):
  loaded with ``local_files_only=True`` and ``use_safetensors=True``;
- a local ``config.json`` file: a randomly initialised model of that configuration;
- a model type (``hf:bert``, ``hf:distilbert``, ``hf:vit``...): a randomly initialised
  model whose configuration is the type's defaults updated by ``kwargs.config``.

kdlab never downloads: a hub id (``bert-base-uncased``) that is not a local folder is an
error, and nothing here opens a network connection (a test checks this with
``HF_HUB_OFFLINE=1`` and ``socket.connect`` patched to fail). Remote code is never run
(``trust_remote_code`` stays off).

Recipe kwargs: ``config`` (a mapping of configuration fields, e.g. ``{hidden_size: 32,
num_hidden_layers: 2}``), ``task`` (``sequence-classification``, the default,
``image-classification`` or ``audio-classification``: the Auto class's head), and
``attn_implementation`` (default ``eager``: only eager attention computes the attention
probabilities that attention taps capture; ``sdpa`` is faster when no term taps them).
``num_labels`` is the data's class count; ``num_channels`` follows ``in_channels`` for
vision configurations that have it.

Taps (BERT-style names; ``kdlab``'s shape probe prints any model's paths in errors):

- hidden states ``(N, L, H)``: ``bert.embeddings`` (the embedding output, TinyBERT's
  layer 0) and ``bert.encoder.layer.K`` (layer K's output);
- attention probabilities ``(N, heads, L, L)``: ``bert.encoder.layer.K.attention.self:output.1``
  (element 1 of the self-attention module's ``(context, probabilities)`` output; the
  student's are taken after attention dropout, so set ``attention_probs_dropout_prob: 0``
  in a student whose attention an ``attention_kl`` term matches);
- the pooled features ``(N, H)``: ``classifier:input``.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdlab.errors import ModelError, did_you_mean
from kdlab.models import MODELS

TASKS = {
    "sequence-classification": "AutoModelForSequenceClassification",
    "image-classification": "AutoModelForImageClassification",
    "audio-classification": "AutoModelForAudioClassification",
}
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")


def _transformers(spec: str) -> Any:
    try:
        import transformers  # noqa: PLC0415 - optional extra, slow to import
    except Exception as err:  # ImportError, or a broken install
        raise ModelError(
            f"model 'hf:{spec}' needs transformers, which is not importable here ({err}); "
            "install the extra: pip install 'kdlab[hf]'"
        ) from None
    if not transformers.utils.is_torch_available():  # e.g. transformers 5 with torch < 2.6
        raise ModelError(
            f"model 'hf:{spec}': transformers {transformers.__version__} cannot use torch "
            f"{torch.__version__} here; install a torch it supports"
        )
    return transformers


def _source(spec: str) -> str:
    """What ``hf:spec`` names: ``folder``, ``file`` or ``type``; a ModelError otherwise."""
    if not spec:
        raise ModelError("model 'hf:' needs a folder, a config.json or a model type after 'hf:'")
    path = Path(spec).expanduser()
    if path.is_dir():
        if not any((path / f).is_file() for f in WEIGHT_FILES):
            raise ModelError(
                f"model 'hf:{spec}': the folder holds no safetensors weights ({WEIGHT_FILES[0]}); "
                "kdlab reads weights only from safetensors. For a random initialisation "
                f"name its config file: hf:{path / 'config.json'}"
            )
        return "folder"
    if path.is_file():
        return "file"
    types = _transformers(spec).models.auto.configuration_auto.CONFIG_MAPPING
    if spec not in types:
        raise ModelError(
            f"model 'hf:{spec}': not a local folder, a config file or a model type "
            f"({did_you_mean(spec, types.keys())}); kdlab never downloads from the hub: "
            "save the model with save_pretrained and name that folder"
        )
    return "type"


def build_hf_model(
    spec: str,
    num_classes: int,
    in_channels: int = 3,
    config: dict[str, Any] | None = None,
    task: str = "sequence-classification",
    attn_implementation: str = "eager",
) -> nn.Module:
    """The model ``hf:spec`` (see the module docstring) with ``num_classes`` labels."""
    source = _source(spec)
    tf = _transformers(spec)
    if task not in TASKS:
        raise ModelError(f"model 'hf:{spec}': unknown task {task!r}; {did_you_mean(task, TASKS)}")
    auto = getattr(tf, TASKS[task])
    overrides = dict(config or {})
    path = str(Path(spec).expanduser())
    if source == "folder":
        return auto.from_pretrained(
            path,
            local_files_only=True,
            use_safetensors=True,
            trust_remote_code=False,
            num_labels=num_classes,
            attn_implementation=attn_implementation,
            **overrides,
        )
    if source == "file":
        cfg = tf.AutoConfig.from_pretrained(path, local_files_only=True, **overrides)
    else:
        cfg = tf.AutoConfig.for_model(spec, **overrides)
    cfg.num_labels = num_classes
    if hasattr(cfg, "num_channels") and "num_channels" not in overrides:
        cfg.num_channels = in_channels
    return auto.from_config(cfg, attn_implementation=attn_implementation)


def _resolve(spec: str) -> Any:
    _source(spec)  # a wrong spec fails here, with its own message, before any kwargs
    return functools.partial(build_hf_model, spec)


MODELS.add_prefix("hf", _resolve)
