"""``kdlab pipeline NAME CONFIG [key=value ...]``: multi-run procedures (data distillation)."""

from __future__ import annotations

import argparse
import json

PIPELINES = ("data_distillation",)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pipeline", help="run a pipeline: " + ", ".join(PIPELINES))
    p.add_argument("name", choices=PIPELINES)
    p.add_argument("config", help="its YAML, e.g. configs/digits/data_distillation.yaml")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. run.train.epochs=5")
    p.add_argument("--out", default="runs/data_distillation", help="folder of the runs")
    p.add_argument("--seed", type=int, help="override run.seed")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from kdlab.pipelines.data_distillation import (  # noqa: PLC0415
        load_pipeline_config,
        run_data_distillation,
    )

    cfg = load_pipeline_config(args.config, args.overrides)
    res = run_data_distillation(cfg, args.out, seed=args.seed)
    print(
        json.dumps(
            {
                "supervised": res.supervised.to_json(),
                "distilled": res.distilled.to_json(),
                "n_labelled": res.n_labelled,
                "n_unlabelled": res.n_unlabelled,
                "n_pseudo": res.n_pseudo,
                "pseudo_acc": res.pseudo_acc,
            },
            indent=2,
        )
    )
    return 0
