"""Data distillation (Radosavovic et al., CVPR 2018, arXiv:1712.04440): omni-supervised
learning from labelled plus unlabelled data with a single model.

1. Train a model on the labelled data (``supervised`` run).
2. Run it on the unlabelled data under several transforms (flips, shifts, scales: each
   a batched tensor op) and average the class probabilities over the transforms
   (the paper ensembles a single model's predictions over transforms of the input).
3. Take the argmax of the average as a hard pseudo-label, dropping samples whose
   averaged top probability is below ``threshold`` (the paper keeps only confident
   predictions; for detection it thresholds box scores).
4. Retrain a student on labelled plus pseudo-labelled data (``distilled`` run).

For classification the transforms need no inversion (a class is invariant to a shift),
unlike the paper's keypoint heat-maps. The paper also fixes the share of labelled
images per mini-batch; here the two sets are simply pooled and shuffled, and the
retraining gets at least as many optimiser steps as the labelled-only run
(``match_steps``), so a small pseudo-labelled set is not also an under-trained one. The labelled
split is a stratified ``labelled_fraction`` of the training split, fixed by
``data.split_seed`` (the run seed only changes initialisation and batch order).
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from kdlab.config import DistillConfig, ModelConfig, RunConfig, Strict, read_yaml, validate
from kdlab.data import DataBundle, TensorSplit, build_dataset, stratified_split
from kdlab.errors import ConfigError
from kdlab.recipes import find
from kdlab.taps import model_logits
from kdlab.views import build_view

Transform = Callable[[Tensor], Tensor]


def build_transforms(specs: Sequence[Mapping[str, Any]]) -> list[Transform]:
    """Transforms from ``[{type: shift, dx: 1}, {type: scale, factor: 1.1}, ...]``: any
    registered view (:mod:`kdlab.views`; ``hflip``, ``shift``, ``scale``, ...)."""
    if not specs:
        raise ConfigError("data distillation needs at least one transform (e.g. identity)")
    return [build_view(spec, f"transforms.{i}") for i, spec in enumerate(specs)]


# ---------------------------------------------------------------- ensembling


@torch.no_grad()
def ensemble_probabilities(
    model: nn.Module,
    x: Tensor,
    transforms: Sequence[Transform],
    batch_size: int = 512,
    device: torch.device | str = "cpu",
) -> Tensor:
    """``mean_t softmax(model(t(x)))``: class probabilities averaged over transforms."""
    was_training = model.training
    model.eval()
    try:
        chunks = []
        for start in range(0, x.shape[0], batch_size):
            xb = x[start : start + batch_size].to(device)
            probs = [F.softmax(model_logits(model(t(xb))).float(), dim=1) for t in transforms]
            chunks.append(torch.stack(probs).mean(dim=0).cpu())
    finally:
        model.train(was_training)
    return torch.cat(chunks)


def pseudo_labels(probs: Tensor, threshold: float = 0.0) -> tuple[Tensor, Tensor]:
    """Hard labels ``argmax`` and the mask of samples whose top probability is at least
    ``threshold``."""
    conf, labels = probs.max(dim=1)
    return labels, conf >= threshold


# ---------------------------------------------------------------- the pipeline


class DataDistillationConfig(Strict):
    labelled_fraction: float = Field(0.1, gt=0.0, lt=1.0, description="share of train labelled")
    transforms: list[dict[str, Any]] = Field(
        default_factory=lambda: [{"type": "identity"}],
        description="inference transforms whose probabilities are averaged",
    )
    threshold: float = Field(0.0, ge=0.0, le=1.0, description="min averaged top probability")
    supervised_epochs: int | None = Field(
        None, ge=1, description="epochs of the labelled-only run (default: run.train.epochs)"
    )
    match_steps: bool = Field(
        True,
        description="give the retraining at least as many optimiser steps as the "
        "labelled-only run (raises its epochs when the pseudo-labelled set is small)",
    )
    model: ModelConfig | None = Field(
        None, description="the model trained on labelled data (default: the run's student)"
    )
    run: dict[str, Any] = Field(
        description="the recipe both trainings use (a RunConfig, without teacher or distill)"
    )


@dataclass
class DataDistillationResult:
    supervised: Any  # RunResult of the model trained on labelled data only
    distilled: Any  # RunResult of the student trained on labelled + pseudo-labelled data
    n_labelled: int
    n_unlabelled: int
    n_pseudo: int
    pseudo_acc: float  # accuracy of the kept pseudo-labels against the hidden labels


def load_pipeline_config(
    source: str | Path | Mapping[str, Any], overrides: Sequence[str] = ()
) -> DataDistillationConfig:
    from kdlab.config import apply_overrides  # noqa: PLC0415

    if isinstance(source, (str, Path)):
        data = read_yaml(find(source))
    else:
        data = copy.deepcopy(dict(source))
    data = apply_overrides(data, overrides)
    cfg = validate(DataDistillationConfig, data)
    _check_run(validate(RunConfig, cfg.run, where="run"))
    build_transforms(cfg.transforms)
    return cfg


def _check_run(run: RunConfig) -> None:
    """Refuse the recipe parts this pipeline would otherwise drop without a word."""
    # Both trainings are cross-entropy on (pseudo-)labels of one model: the pseudo-labels
    # are the ensemble's, not a teacher's, so distill terms, views, stages and a teacher
    # have no role here.
    if run.teacher is not None:
        raise ConfigError(
            "run.teacher: data distillation has no teacher (the pseudo-labels come from the "
            "model trained on the labelled data; set that model with 'model:'); remove it"
        )
    if run.distill != DistillConfig():
        raise ConfigError(
            "run.distill: data distillation trains both runs with cross-entropy on labels "
            "and pseudo-labels, so distill terms, views and stages are not used; remove "
            "run.distill (or train a distillation recipe with `kdlab train`)"
        )


def split_labelled(
    train: TensorSplit, fraction: float, seed: int
) -> tuple[TensorSplit, TensorSplit]:
    """A stratified ``fraction`` of ``train`` as labelled; the rest as unlabelled."""
    rest, labelled = stratified_split(train.y.numpy(), fraction, seed)
    return train.subset(labelled), train.subset(rest)


def run_data_distillation(
    cfg: DataDistillationConfig,
    out_dir: str | Path,
    seed: int | None = None,
    bundle: DataBundle | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> DataDistillationResult:
    """Run the four steps; both trainings write run folders under ``out_dir``."""
    from kdlab.engine import load_model, train  # noqa: PLC0415 - engine pulls in ignite
    from kdlab.engine.handlers import ReportProgress  # noqa: PLC0415

    out_dir = Path(out_dir)
    run = validate(RunConfig, cfg.run, where="run")
    _check_run(run)
    if seed is not None:
        run = run.model_copy(update={"seed": seed})
    data = bundle if bundle is not None else build_dataset(run.data)
    labelled, unlabelled = split_labelled(data.train, cfg.labelled_fraction, run.data.split_seed)

    # 1. the model trained on labelled data only (also the supervised-only baseline)
    first = run.model_copy(deep=True)
    if cfg.model is not None:
        first.student = cfg.model
    first.teacher = None
    first.distill.terms = [{"method": "ce"}]
    first.distill.stages = []
    first.name = f"{run.name}-supervised"
    if cfg.supervised_epochs is not None:
        first.train.epochs = cfg.supervised_epochs
    sup_bundle = _with_train(data, labelled)
    handlers = [ReportProgress(progress)] if progress is not None else []
    supervised = train(
        first, run_dir=out_dir / "supervised", bundle=sup_bundle, handlers=handlers, overwrite=True
    )
    model = load_model(
        first.student.name,
        first.student.kwargs,
        supervised.run_dir,
        data.num_classes,
        data.in_channels,
        first.student.output,
    )

    # 2-3. multi-transform inference, ensembled into pseudo-labels
    probs = ensemble_probabilities(
        model, unlabelled.x, build_transforms(cfg.transforms), run.data.eval_batch_size
    )
    labels, keep = pseudo_labels(probs, cfg.threshold)
    kept = keep.nonzero().flatten()
    pseudo = TensorSplit(unlabelled.x[kept], labels[kept])
    pseudo_acc = (
        100.0 * float((labels[kept] == unlabelled.y[kept]).float().mean()) if len(kept) else 0.0
    )

    # 4. the student on labelled + pseudo-labelled data
    second = run.model_copy(deep=True)
    second.teacher = None
    second.distill.terms = [{"method": "ce"}]
    second.distill.stages = []
    second.name = f"{run.name}-distilled"
    merged = TensorSplit(torch.cat([labelled.x, pseudo.x]), torch.cat([labelled.y, pseudo.y]))
    if cfg.match_steps:
        steps_first = first.train.epochs * _batches(len(labelled), first.data.batch_size)
        per_epoch = _batches(len(merged), second.data.batch_size)
        second.train.epochs = max(second.train.epochs, math.ceil(steps_first / per_epoch))
    distilled = train(
        second,
        run_dir=out_dir / "distilled",
        bundle=_with_train(data, merged),
        handlers=handlers,
        overwrite=True,
    )
    return DataDistillationResult(
        supervised=supervised,
        distilled=distilled,
        n_labelled=len(labelled),
        n_unlabelled=len(unlabelled),
        n_pseudo=int(len(kept)),
        pseudo_acc=pseudo_acc,
    )


def _batches(n: int, batch_size: int) -> int:
    """Batches per epoch of a training loader (the last partial one is dropped)."""
    return max(n // batch_size, 1) if n > batch_size else 1


def _with_train(bundle: DataBundle, train_split: TensorSplit) -> DataBundle:
    return dataclasses.replace(bundle, train=train_split, extra=dict(bundle.extra))
