"""``kdlab protocol cqd``: cross quality distillation on degraded digits.

A teacher (the recipe's, e.g. cnn_medium) is trained once on clean digits. For each
degradation, the validation and test splits are degraded once (fixed seed), and two
students (the recipe's) are trained on the degraded training images:

- labels only: cross-entropy on the degraded view;
- CQD: the same plus the CQD term, the teacher seeing the clean image
  (Su & Maji, arXiv:1604.00433).

Selection is on the degraded validation split; tests are on the degraded test split.
Rows also show the clean teacher evaluated on the degraded test split.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kdlab.errors import ConfigError
from kdlab.protocols import _common
from kdlab.report import fmt_mean_std

CONFIG = "configs/digits/cqd.yaml"

# key -> (row label, view spec)
DEGRADATIONS: dict[str, tuple[str, dict[str, Any]]] = {
    "lowres4": ("low-res 4x4", {"type": "downsample", "size": 4}),
    "lowres2": ("low-res 2x2", {"type": "downsample", "size": 2}),
    "blur1": ("blur sigma 1", {"type": "gaussian_blur", "sigma": 1.0}),
    "noise1": ("noise sigma 1", {"type": "additive_noise", "sigma": 1.0}),
    "quant2": ("quantise 2 levels", {"type": "quantize", "levels": 2}),
}
DEFAULT = ["lowres4", "blur1", "noise1"]


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = _common.protocol_parser(sub, "cqd", __doc__, CONFIG)
    p.add_argument(
        "--degradations",
        nargs="+",
        default=DEFAULT,
        help="which rows: " + ", ".join(f"{k} ({v[0]})" for k, v in DEGRADATIONS.items()),
    )
    p.add_argument("--teacher-epochs", type=int, help="epochs of the clean teacher")
    p.set_defaults(func=run)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the protocol from an argument list (as ``kdlab protocol cqd ...``)."""
    return run(_common.standalone(add_parser, "cqd", argv))


def run(args: argparse.Namespace) -> int:
    from kdlab.config import load_config  # noqa: PLC0415
    from kdlab.data import DataBundle, TensorSplit, build_dataset  # noqa: PLC0415
    from kdlab.engine import evaluate, load_model, train  # noqa: PLC0415
    from kdlab.views.degrade import degrade_tensor  # noqa: PLC0415

    unknown = [d for d in args.degradations if d not in DEGRADATIONS]
    if unknown:
        raise ConfigError(f"unknown degradation(s) {unknown}; valid: {list(DEGRADATIONS)}")
    out = _common.out_dir(args, "cqd")
    base = load_config(args.config, _common.run_overrides(args))
    if base.teacher is None:
        raise ConfigError(f"{args.config} has no teacher")
    clean = build_dataset(base.data)

    # the clean teacher, trained once
    tcfg = base.model_copy(deep=True)
    tcfg.name, tcfg.student, tcfg.teacher = "teacher", base.teacher.model_copy(), None
    tcfg.student.checkpoint = None
    tcfg.distill.terms, tcfg.distill.views, tcfg.distill.stages = [{"method": "ce"}], {}, []
    if args.teacher_epochs:
        tcfg.train.epochs = args.teacher_epochs
    teacher_res = train(tcfg, run_dir=out / "teacher", bundle=clean, overwrite=True)
    teacher_dir = Path(teacher_res.run_dir)
    teacher = load_model(
        tcfg.student.name,
        tcfg.student.kwargs,
        str(teacher_dir),
        clean.num_classes,
        clean.in_channels,
    )
    print(f"teacher: clean test {teacher_res.test_acc_best:.2f}%", file=sys.stderr)

    records: list[dict[str, Any]] = []
    rows = []
    for key in args.degradations:
        name, spec = DEGRADATIONS[key]
        degraded = DataBundle(
            train=clean.train,
            val=None
            if clean.val is None
            else TensorSplit(degrade_tensor(clean.val.x, spec, seed=1), clean.val.y),
            test=TensorSplit(degrade_tensor(clean.test.x, spec, seed=2), clean.test.y),
            num_classes=clean.num_classes,
            in_channels=clean.in_channels,
            image_size=clean.image_size,
            name=f"{clean.name}-degraded",
        )
        t_deg = evaluate(teacher, degraded.test)["acc1"]
        rows.append([name, "clean teacher (reference)", "-", f"{t_deg:.2f}", "-", "-"])
        records.append({"degradation": name, "arm": "teacher", "seed": 0, "test_acc_best": t_deg})
        slug = key
        base_acc: list[float] = []
        for arm in ("labels only", "CQD"):
            accs = []
            for seed in args.seeds:
                cfg = base.model_copy(deep=True)
                cfg.seed = seed
                cfg.name = f"{slug}-{arm.replace(' ', '_')}-s{seed}"
                cfg.distill.views = {"degraded": spec}
                if arm == "labels only":
                    cfg.teacher = None
                    cfg.distill.terms = [t for t in base.distill.terms if t["method"] == "ce"] or [
                        {"method": "ce", "student_view": "degraded"}
                    ]
                else:
                    cfg.teacher = base.teacher.model_copy(update={"checkpoint": str(teacher_dir)})
                res = train(cfg, run_dir=out / slug / cfg.name, bundle=degraded, overwrite=True)
                accs.append(res)
                records.append(
                    {
                        "degradation": name,
                        "arm": arm,
                        "seed": seed,
                        "test_acc_best": res.test_acc_best,
                        "test_acc_last": res.test_acc_last,
                        "val_acc": res.val_acc,
                        "best_epoch": res.best_epoch,
                        "run_dir": res.run_dir,
                    }
                )
                print(f"{name} / {arm} / seed {seed}: {res.test_acc_best:.2f}%", file=sys.stderr)
            best = [r.test_acc_best for r in accs]
            if arm == "labels only":
                base_acc = best
            rows.append(
                [
                    name,
                    arm,
                    fmt_mean_std(r.val_acc for r in accs if r.val_acc is not None),
                    fmt_mean_std(best),
                    fmt_mean_std(r.test_acc_last for r in accs),
                    "-" if arm == "labels only" else _common.paired_gain(best, base_acc),
                ]
            )
    cqd_term = next(t for t in base.distill.terms if t["method"] == "cqd")
    cmd = _common.command("cqd", args, ["degradations", "teacher-epochs"])
    _common.save_table(
        out,
        f"Cross quality distillation on digits ({len(args.seeds)} seeds)",
        [
            "degradation",
            "arm",
            "val acc (%)",
            "test acc, best val (%)",
            "test acc, last (%)",
            "paired gain (points)",
        ],
        rows,
        records,
        notes=[
            f"teacher {base.teacher.name} trained on clean digits: clean test "
            f"{teacher_res.test_acc_best:.2f}%; student {base.student.name}",
            f"CQD term: T={cqd_term.get('T', 4.0)}, weight {cqd_term.get('weight', 1.0)}; "
            "ce on the degraded view in both arms",
            "val and test splits degraded once with a fixed seed; selection on degraded val; "
            "paired gain: per-seed difference of best-val test accuracy to labels only",
        ],
        command=cmd,
    )
    return 0
