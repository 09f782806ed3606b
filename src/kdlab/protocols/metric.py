"""``kdlab protocol metric``: DarkRank on digits, retrieval over unseen classes.

Embedding networks are trained on digits classes 0-4 and evaluated by Recall@1 and
Recall@5 of retrieval over all samples of classes 5-9 (each queries all the others,
Euclidean distance on L2-normalised embeddings). The teacher (embed_medium) and the
baseline student (embed_small) train with the triplet loss alone; the DarkRank students
add the soft or the hard transfer (Chen, Wang & Zhang, arXiv:1707.01220).

Selection: the epoch with the best Recall@1 on the validation split (held-out samples
of the training classes), so neither selection nor early stopping sees a test class.
The engine selects on accuracy, which means nothing for embeddings, so this protocol
runs its own short loop on the same pieces (Distiller, optimiser, schedule, loader).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kdlab.config import RunConfig
from kdlab.data import DataBundle, TensorSplit
from kdlab.errors import ConfigError
from kdlab.protocols import _common
from kdlab.report import fmt_mean_std

CONFIG = "configs/digits/darkrank.yaml"


@torch.no_grad()
def embed(model: nn.Module, split: TensorSplit, device: torch.device, batch: int = 512):  # noqa: ANN201
    was = model.training
    model.eval()
    try:
        xs = [split.x[i : i + batch].to(device) for i in range(0, len(split), batch)]
        out = [model(x).float() for x in xs]
    finally:
        model.train(was)
    return F.normalize(torch.cat(out).flatten(1), dim=1).cpu()


def retrieval(model: nn.Module, split: TensorSplit, device: torch.device) -> dict[int, float]:
    """Recall@1 and @5 in percent."""
    from kdlab.functional.rank import recall_at_k  # noqa: PLC0415

    r = recall_at_k(embed(model, split, device), split.y, ks=(1, 5))
    return {k: 100.0 * v for k, v in r.items()}


def train_metric(cfg: RunConfig, bundle: DataBundle, run_dir: Path) -> dict[str, Any]:
    """Train ``cfg`` and select the epoch with the best validation Recall@1."""
    from kdlab.data import make_loader  # noqa: PLC0415
    from kdlab.distiller import Distiller  # noqa: PLC0415
    from kdlab.engine import load_model  # noqa: PLC0415
    from kdlab.engine.env import resolve_device  # noqa: PLC0415
    from kdlab.engine.optim import build_optimizer, build_scheduler  # noqa: PLC0415
    from kdlab.methods import build_terms  # noqa: PLC0415
    from kdlab.rundir import RunDir  # noqa: PLC0415
    from kdlab.views import build_views  # noqa: PLC0415

    start = time.time()
    rd = RunDir(run_dir)
    rd.create()
    device = resolve_device(cfg.train.device)
    torch.manual_seed(cfg.seed)
    nc, ch = bundle.num_classes, bundle.in_channels
    student = load_model(cfg.student.name, cfg.student.kwargs, cfg.student.checkpoint, nc, ch)
    teacher = None
    if cfg.teacher is not None:
        teacher = load_model(cfg.teacher.name, cfg.teacher.kwargs, cfg.teacher.checkpoint, nc, ch)
    distiller = Distiller(
        student,
        teacher,
        build_terms(cfg.distill.terms),
        build_views(cfg.distill.views),
        example_input=bundle.train.x[:2],
    ).to(device)
    params = [p for p in distiller.parameters() if p.requires_grad]
    opt = build_optimizer(params, cfg.train.optimizer)
    sched = build_scheduler(opt, cfg.train.schedule, cfg.train.epochs)
    loader = make_loader(
        bundle.train, cfg.data.batch_size, train=True, seed=cfg.seed, device=device
    )
    best: dict[str, Any] = {"r1": -1.0, "epoch": 0, "state": None}
    history = []
    for epoch in range(cfg.train.epochs):
        loader.set_epoch(epoch)
        distiller.train()
        sums: dict[str, float] = {}
        for x, y, idx in loader:
            out = distiller(x, y, idx, epoch=epoch)
            opt.zero_grad(set_to_none=True)
            out.total.backward()
            opt.step()
            for k, v in out.losses.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach()) / len(loader)
        sched.step()
        row: dict[str, Any] = {"epoch": epoch + 1, **{f"train_{k}": v for k, v in sums.items()}}
        if bundle.val is not None:
            val = retrieval(student, bundle.val, device)
            row.update(val_r1=val[1], val_r5=val[5])
            if val[1] > best["r1"]:
                best = {"r1": val[1], "epoch": epoch + 1, "state": _copy(student)}
        history.append(row)
    last = retrieval(student, bundle.test, device)
    last_state = _copy(student)
    if best["state"] is not None:
        student.load_state_dict(best["state"])
    chosen = retrieval(student, bundle.test, device) if best["state"] is not None else last
    rd.save_weights("model", student.state_dict())
    rd.save_weights("last", last_state)
    result = {
        "run_dir": str(run_dir),
        "selection": "best-val-recall@1" if best["state"] is not None else "last",
        "best_epoch": best["epoch"],
        "val_r1": best["r1"] if best["state"] is not None else None,
        "test_r1_best": chosen[1],
        "test_r5_best": chosen[5],
        "test_r1_last": last[1],
        "test_r5_last": last[5],
        "wall_time_s": time.time() - start,
    }
    rd.write_results(result)
    rd.write_metrics(history)
    return result


def _copy(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


ARMS: dict[str, list[dict[str, Any]] | None] = {
    "triplet (metric loss alone)": None,
    "triplet + DarkRank soft": [{"transfer": "soft"}],
    "triplet + DarkRank hard": [{"transfer": "hard"}],
}


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = _common.protocol_parser(sub, "metric", __doc__, CONFIG)
    p.add_argument("--teacher-epochs", type=int, help="epochs of the teacher")
    p.set_defaults(func=run)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the protocol from an argument list (as ``kdlab protocol metric ...``)."""
    return run(_common.standalone(add_parser, "metric", argv))


def run(args: argparse.Namespace) -> int:
    from kdlab.config import load_config  # noqa: PLC0415
    from kdlab.data import build_dataset  # noqa: PLC0415

    out = _common.out_dir(args, "metric")
    base = load_config(args.config, _common.run_overrides(args))
    if base.teacher is None:
        raise ConfigError(f"{args.config} has no teacher")
    dr = next((t for t in base.distill.terms if t["method"] == "darkrank"), None)
    if dr is None:
        raise ConfigError(f"{args.config} has no darkrank term")
    metric_terms = [t for t in base.distill.terms if t["method"] != "darkrank"]
    data = build_dataset(base.data)

    tcfg = base.model_copy(deep=True)
    tcfg.name, tcfg.seed, tcfg.teacher = "teacher", 0, None
    tcfg.student = base.teacher.model_copy(update={"checkpoint": None})
    tcfg.distill.terms = metric_terms
    if args.teacher_epochs:
        tcfg.train.epochs = args.teacher_epochs
    teacher = train_metric(tcfg, data, out / "teacher")
    print(f"teacher: R@1 {teacher['test_r1_best']:.2f}", file=sys.stderr)

    records: list[dict[str, Any]] = [{"arm": "teacher", "seed": 0, **teacher}]
    rows = [
        [
            f"teacher {base.teacher.name} (triplet)",
            f"{teacher['test_r1_best']:.2f}",
            f"{teacher['test_r5_best']:.2f}",
            f"{teacher['test_r1_last']:.2f}",
            "-",
        ]
    ]
    base_acc: list[float] = []
    for arm, extra in ARMS.items():
        results = []
        for seed in args.seeds:
            cfg = base.model_copy(deep=True)
            cfg.seed = seed
            cfg.name = f"{arm.split()[-1] if extra else 'triplet'}-s{seed}"
            if extra is None:
                cfg.teacher, cfg.distill.terms = None, metric_terms
            else:
                cfg.teacher = base.teacher.model_copy(update={"checkpoint": str(out / "teacher")})
                cfg.distill.terms = metric_terms + [{**dr, **extra[0]}]
            res = train_metric(cfg, data, out / cfg.name)
            results.append(res)
            records.append({"arm": arm, "seed": seed, **res})
            print(f"{arm} / seed {seed}: R@1 {res['test_r1_best']:.2f}", file=sys.stderr)
        r1 = [r["test_r1_best"] for r in results]
        if extra is None:
            base_acc = r1
        rows.append(
            [
                arm,
                fmt_mean_std(r1),
                fmt_mean_std(r["test_r5_best"] for r in results),
                fmt_mean_std(r["test_r1_last"] for r in results),
                "-" if extra is None else _common.paired_gain(r1, base_acc),
            ]
        )
    cmd = _common.command("metric", args, ["teacher-epochs"])
    classes = base.data.options.get("train_classes", [0, 1, 2, 3, 4])
    _common.save_table(
        out,
        f"DarkRank on digits: retrieval over unseen classes ({len(args.seeds)} seeds)",
        [
            "model",
            "Recall@1 (%), best val",
            "Recall@5 (%), best val",
            "Recall@1 (%), last",
            "paired R@1 gain (points)",
        ],
        rows,
        records,
        notes=[
            f"trained on classes {classes}; retrieval over all samples of the other classes",
            f"student {base.student.name}; embedding size "
            f"{base.student.kwargs.get('dim') or data.num_classes}; "
            f"DarkRank alpha={dr.get('alpha', 3.0)}, "
            f"beta={dr.get('beta', 3.0)}, list_length={dr.get('list_length', 4)}, "
            f"weight {dr.get('weight', 1.0)}; triplet margin "
            f"{metric_terms[0].get('margin', 0.2) if metric_terms else '-'}",
            "selection: best Recall@1 on held-out samples of the training classes; paired "
            "gain: per-seed difference of Recall@1 to the triplet-only student",
        ],
        command=cmd,
    )
    return 0
