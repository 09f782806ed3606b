"""``kdlab tune CONFIG --space SPACE.yaml``: Optuna search over recipe keys."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "tune",
        help="search recipe hyperparameters with Optuna (TPE, median pruning on validation)",
        description="Search recipe keys with Optuna. Trials optimise the best epoch's "
        "validation score, train.select (top-1 accuracy by default; never test). Several "
        "machines share a study through one --storage URL (PostgreSQL) and the same "
        "--study name.",
    )
    p.add_argument("config", help="the base YAML recipe")
    p.add_argument("overrides", nargs="*", help="dotted overrides of the base recipe")
    p.add_argument("--space", required=True, help="YAML: {dotted.key: {type, low, high, ...}}")
    p.add_argument("--trials", type=int, default=None, help="trials this command runs (20)")
    p.add_argument("--timeout", type=float, default=None, help="stop starting trials after S s")
    p.add_argument("--storage", help="SQLAlchemy URL (default: sqlite:///OUT/study.db)")
    p.add_argument("--study", help="study name (default: the recipe's name)")
    p.add_argument("--workers", type=int, default=1, help="local worker processes (1)")
    p.add_argument("--out", help="output folder (default: OUTPUT_DIR/tune/STUDY)")
    p.add_argument("--seed", type=int, default=0, help="sampler seed (worker i uses seed+i)")
    p.add_argument(
        "--heartbeat",
        type=int,
        default=10,
        help="seconds between a running trial's beats; a trial silent for 3 beats is marked FAIL",
    )
    p.add_argument("--no-prune", action="store_true", help="run every trial to the end")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # spawned workers
    p.set_defaults(func=run_tune)


def run_tune(args: argparse.Namespace) -> int:
    from kdlab.config import load_config  # noqa: PLC0415
    from kdlab.errors import ConfigError  # noqa: PLC0415
    from kdlab.tune import TuneSettings, default_storage, run_worker, tune  # noqa: PLC0415

    cfg = load_config(args.config, args.overrides)
    if args.workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {args.workers}")
    if args.trials is not None and args.trials < 1:
        raise ConfigError(f"--trials must be >= 1, got {args.trials}")
    if args.heartbeat < 1:
        raise ConfigError(f"--heartbeat must be >= 1 second, got {args.heartbeat}")
    study = args.study or cfg.name
    out = args.out or str(Path(cfg.output_dir) / "tune" / study)
    settings = TuneSettings(
        config=str(args.config),
        overrides=list(args.overrides),
        space=str(args.space),
        storage=args.storage or default_storage(out),
        study=study,
        out=out,
        seed=args.seed,
        heartbeat=args.heartbeat,
        prune=not args.no_prune,
    )
    trials = args.trials if args.trials is not None or args.timeout is not None else 20
    if args.worker:
        run_worker(settings, trials, args.timeout)
        return 0
    summary = tune(settings, trials, args.timeout, args.workers)
    print(json.dumps(summary, indent=2, default=str))
    return 0
