"""What a run would otherwise fail on after it started, checked before anything starts.

``kdlab train`` calls :func:`check_run` before it spawns processes (``--nproc``), so a
mistake in a recipe is one line in the launcher rather than one traceback per rank, and
before any data is read. :func:`kdlab.config.load_recipe` has already checked terms,
views, stages and their cross-references; this adds what needs the registries and the
disk: model and dataset names, dataset options, the weights a ``checkpoint:`` names,
the global batch over the processes, and whether the run folder may take the run.
Whatever is left (a model's kwargs, the data files' contents) a worker reports as one
line (:func:`kdlab.engine.distributed.launch`).
"""

from __future__ import annotations

from pathlib import Path

from kdlab.config import RunConfig
from kdlab.data import DATASET_OPTIONS, DATASETS, options_for
from kdlab.engine.checkpoint import check_weights
from kdlab.engine.distributed import per_rank_batch
from kdlab.models import MODELS
from kdlab.rundir import RunDir, weights_source

# Built by optional libraries on demand; their names are checked when they are built.
_EXTERNAL = ("tv:", "timm:")


def check_run(
    cfg: RunConfig,
    run_dir: str | Path | RunDir | None = None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    nproc: int = 1,
) -> None:
    """Raise the :class:`~kdlab.errors.KdlabError` the run would meet, if any."""
    for role in ("student", "teacher"):
        model = getattr(cfg, role)
        if model is None:
            continue
        if not model.name.startswith(_EXTERNAL):
            MODELS.get(model.name)
        if model.checkpoint is not None:
            check_weights(weights_source(model.checkpoint, f"{role}.checkpoint"))
    DATASETS.get(cfg.data.name)
    if cfg.data.name in DATASET_OPTIONS:
        options_for(cfg.data)
    per_rank_batch(cfg.data.batch_size, nproc)
    folder = run_dir if isinstance(run_dir, RunDir) else None
    if folder is None:
        folder = RunDir(run_dir) if run_dir is not None else RunDir.of(cfg)
    folder.check_start(cfg, resume, overwrite)
