"""Stages: pre-stages declared by methods (or the recipe), then the main stage."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from kdlab.config import MAIN_STAGE, OptimizerConfig, RunConfig, ScheduleConfig
from kdlab.distiller import Distiller
from kdlab.errors import ConfigError

MAIN = MAIN_STAGE


@dataclass
class Stage:
    """One training phase. ``losses`` None means every main-stage term at its weight."""

    name: str
    epochs: int
    losses: dict[str, float] | None
    train: list[str]
    optimizer: OptimizerConfig
    schedule: ScheduleConfig

    @property
    def is_main(self) -> bool:
        return self.name == MAIN


def resolve_stages(cfg: RunConfig, distiller: Distiller) -> list[Stage]:
    """Pre-stages (the methods' own, or ``distill.stages`` when given), then main."""
    if cfg.distill.stages is None:
        pre = [s for term in distiller.terms.values() for s in term.pre_stages()]
    else:
        pre = list(cfg.distill.stages)  # validated by load_recipe
    names = [s.name for s in pre]
    if MAIN in names or len(set(names)) != len(names):
        raise ConfigError(f"stage names must be unique and not {MAIN!r}: {names}")
    cap = cfg.train.pre_stage_epochs
    lengths = [s.resolved_epochs(cfg.train.epochs) if cap is None else cap for s in pre]
    stages = [
        Stage(
            name=s.name,
            epochs=n,
            losses=dict(s.losses),
            train=list(s.train),
            optimizer=s.optimizer or cfg.train.optimizer,
            schedule=s.schedule,
        )
        for s, n in zip(pre, lengths)
        if n > 0
    ]
    frozen = [
        f"terms.{name}.{sub}"
        for name, term in distiller.terms.items()
        for sub in term.frozen_in_main
    ]
    stages.append(
        Stage(
            name=MAIN,
            epochs=cfg.train.epochs,
            losses=distiller.main_losses(),  # explicit: pre-stage-only terms are left out
            train=["student", "terms"] + [f"-{p}" for p in frozen],
            optimizer=cfg.train.optimizer,
            schedule=cfg.train.schedule,
        )
    )
    for stage in stages:
        distiller.loss_plan(stage.losses)  # validates loss names early
        trainable_parameters(distiller, stage)
    return stages


def trainable_parameters(distiller: Distiller, stage: Stage) -> list[nn.Parameter]:
    """Set ``requires_grad`` for the stage and return the trainable parameters.

    ``stage.train`` holds module paths in the Distiller; a leading ``-`` excludes one.
    """
    include = [p for p in stage.train if not p.startswith("-")]
    exclude = [p[1:] for p in stage.train if p.startswith("-")]
    for p in distiller.parameters():
        p.requires_grad_(False)
    for path, flag in [(p, True) for p in include] + [(p, False) for p in exclude]:
        try:
            module = distiller.get_submodule(path)
        except AttributeError:
            valid = [n for n, _ in distiller.named_modules() if n and n.count(".") < 3]
            raise ConfigError(
                f"stage {stage.name!r}: no module {path!r} to train; valid: {', '.join(valid[:20])}"
            ) from None
        for p in module.parameters():
            p.requires_grad_(flag)
    params = [p for p in distiller.parameters() if p.requires_grad]
    if not params:
        raise ConfigError(f"stage {stage.name!r} trains no parameters (train: {stage.train})")
    return params
