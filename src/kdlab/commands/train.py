"""``kdlab train CONFIG [key=value ...]`` and ``kdlab eval RUN``."""

from __future__ import annotations

import argparse
import json


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a recipe (a teacher, a student, a distillation)")
    p.add_argument("config", help="a YAML recipe")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.epochs=5")
    p.add_argument("--run-dir", help="run folder (default: output_dir/name)")
    p.add_argument("--resume", action="store_true", help="continue from the last good checkpoint")
    p.add_argument(
        "--overwrite", action="store_true", help="replace a run already in the run folder"
    )
    p.add_argument(
        "--nproc",
        type=int,
        default=None,
        metavar="N",
        help="data-parallel over N local processes (gloo on CPU, NCCL on CUDA); "
        "data.batch_size is the global batch. Under torchrun, leave this out",
    )
    p.set_defaults(func=run_train)

    e = sub.add_parser("eval", help="evaluate a finished run's selected weights")
    e.add_argument("run", help="a finished run's folder")
    e.add_argument("--split", choices=["train", "val", "test"], default="test")
    e.add_argument(
        "--weights",
        choices=["model", "best", "last"],
        default="model",
        help="the selected weights (model), the best-on-validation or the last epoch's",
    )
    e.set_defaults(func=run_eval)


def run_train(args: argparse.Namespace) -> int:
    from kdlab.config import load_config  # noqa: PLC0415
    from kdlab.engine import distributed  # noqa: PLC0415
    from kdlab.errors import ConfigError  # noqa: PLC0415

    cfg = load_config(args.config, args.overrides)  # fail early, before any spawn
    if args.nproc is not None and args.nproc < 1:
        raise ConfigError(f"--nproc must be >= 1, got {args.nproc}")
    if args.nproc and args.nproc > 1 and distributed.launched_by_torchrun():
        raise ConfigError("--nproc spawns processes itself; under torchrun, leave it out")
    distributed.launch(
        _train_worker,
        args.config,
        list(args.overrides),
        args.run_dir,
        args.resume,
        args.overwrite,
        nproc=args.nproc,
        device=cfg.train.device,
    )
    return 0


def _train_worker(
    local_rank: int,
    config: str,
    overrides: list[str],
    run_dir: str | None,
    resume: bool,
    overwrite: bool,
) -> None:
    # Module level so that spawned processes can import it.
    from kdlab.config import load_config  # noqa: PLC0415
    from kdlab.engine import distributed, train  # noqa: PLC0415

    cfg = load_config(config, overrides)
    result = train(cfg, run_dir=run_dir, resume=resume, overwrite=overwrite)
    if distributed.is_main():
        print(json.dumps(result.to_json(), indent=2), flush=True)


def run_eval(args: argparse.Namespace) -> int:
    from kdlab.data import build_dataset  # noqa: PLC0415
    from kdlab.engine import evaluate, load_model  # noqa: PLC0415
    from kdlab.engine.env import resolve_device  # noqa: PLC0415
    from kdlab.errors import DataError  # noqa: PLC0415
    from kdlab.rundir import RunDir  # noqa: PLC0415

    run = RunDir(args.run)
    cfg = run.read_config()
    data = build_dataset(cfg.data)
    model = load_model(
        cfg.student.name,
        cfg.student.kwargs,
        str(run.weights_path(args.weights)),
        data.num_classes,
        data.in_channels,
        cfg.student.output,
    )
    split = getattr(data, args.split)
    if split is None:
        raise DataError(f"dataset {cfg.data.name!r} has no {args.split!r} split")
    device = resolve_device(cfg.train.device)
    metrics = evaluate(model.to(device), split, cfg.data.eval_batch_size, device)
    print(json.dumps({"run": str(run), "split": args.split, **metrics}, indent=2))
    return 0
