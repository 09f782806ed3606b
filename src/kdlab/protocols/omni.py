"""``kdlab protocol omni``: data distillation with 10% of digits labelled.

Two rows per table, each mean +- std over seeds, test accuracy of the epoch selected
on the (fully labelled, small) validation split and of the last epoch:

- supervised only: the model trained on the labelled 10%;
- data distillation: the same architecture retrained on the labelled 10% plus the
  rest of the training split pseudo-labelled by the first model's predictions
  averaged over the recipe's transforms (Radosavovic et al., arXiv:1712.04440).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from kdlab.protocols import _common
from kdlab.report import fmt_mean_std

CONFIG = "configs/digits/data_distillation.yaml"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = _common.protocol_parser(sub, "omni", __doc__, CONFIG)
    p.add_argument("--threshold", type=float, help="override the confidence threshold")
    p.set_defaults(func=run)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the protocol from an argument list (as ``kdlab protocol omni ...``)."""
    return run(_common.standalone(add_parser, "omni", argv))


def run(args: argparse.Namespace) -> int:
    from kdlab.pipelines.data_distillation import (  # noqa: PLC0415
        load_pipeline_config,
        run_data_distillation,
    )

    out = _common.out_dir(args, "omni")
    overrides = _common.run_overrides(args, prefix="run.")
    if args.epochs is not None:  # --epochs sets both trainings
        overrides.append(f"supervised_epochs={args.epochs}")
    if args.threshold is not None:
        overrides.append(f"threshold={args.threshold}")
    cfg = load_pipeline_config(args.config, overrides)
    records = []
    for seed in args.seeds:
        res = run_data_distillation(cfg, out / f"seed{seed}", seed=seed)
        for arm, r in (("supervised only", res.supervised), ("data distillation", res.distilled)):
            records.append(
                {
                    "arm": arm,
                    "seed": seed,
                    "test_acc_best": r.test_acc_best,
                    "test_acc_last": r.test_acc_last,
                    "val_acc": r.val_acc,
                    "best_epoch": r.best_epoch,
                    "n_train": res.n_labelled + (res.n_pseudo if arm != "supervised only" else 0),
                    "n_pseudo": res.n_pseudo if arm != "supervised only" else 0,
                    "pseudo_acc": res.pseudo_acc if arm != "supervised only" else None,
                    "run_dir": r.run_dir,
                }
            )
        print(
            f"seed {seed}: supervised {res.supervised.test_acc_best:.2f}, "
            f"distilled {res.distilled.test_acc_best:.2f} "
            f"({res.n_pseudo}/{res.n_unlabelled} pseudo-labels, {res.pseudo_acc:.1f}% right)",
            file=sys.stderr,
        )
    rows = []
    base = [r["test_acc_best"] for r in records if r["arm"] == "supervised only"]
    for arm in ("supervised only", "data distillation"):
        rs = [r for r in records if r["arm"] == arm]
        gain = (
            "-"
            if arm == "supervised only"
            else _common.paired_gain([r["test_acc_best"] for r in rs], base)
        )
        pseudo = [r["pseudo_acc"] for r in rs if r["pseudo_acc"] is not None]
        rows.append(
            [
                arm,
                round(sum(r["n_train"] for r in rs) / len(rs)),
                fmt_mean_std(r["test_acc_best"] for r in rs),
                fmt_mean_std(r["test_acc_last"] for r in rs),
                gain,
                fmt_mean_std(pseudo) if pseudo else "-",
            ]
        )
    cmd = _common.command("omni", args, ["threshold"])
    _common.save_table(
        out,
        f"Data distillation on digits, {cfg.labelled_fraction:.0%} labelled "
        f"({len(args.seeds)} seeds)",
        [
            "arm",
            "train samples (mean)",
            "test acc, best val (%)",
            "test acc, last (%)",
            "paired gain (points)",
            "pseudo-label acc (%)",
        ],
        rows,
        records,
        notes=[
            f"model {cfg.run['student']['name']}, transforms: "
            + ", ".join(
                t["type"] + "".join(f" {k}={v}" for k, v in t.items() if k != "type")
                for t in cfg.transforms
            )
            + f"; threshold {cfg.threshold}",
            "selection on the labelled validation split (best-val); mean +- std over seeds; "
            "paired gain: per-seed difference of best-val test accuracy to supervised only",
            "pseudo-label accuracy is measured against the hidden labels of the kept samples",
        ],
        command=cmd,
    )
    return 0
