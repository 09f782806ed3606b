"""``kdlab verify propositions``: Monte Carlo check of the noise / Jacobian claims."""

from __future__ import annotations

import argparse
import time

from kdlab.errors import ConfigError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("verify", help="check claims kdlab relies on numerically")
    what = p.add_subparsers(dest="what", metavar="WHAT", required=True)
    q = what.add_parser(
        "propositions",
        help="Monte Carlo check of four noise/Jacobian claims (Srinivas & Fleuret, "
        "arXiv:1803.00443), stated in kdlab/verify/propositions.py",
    )
    q.add_argument("--out", default="runs/verify", help="folder for report, CSV and plot")
    q.add_argument("--samples", type=int, default=4000, help="antithetic pairs of z per sigma")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--points", type=int, default=6, help="evaluation points x per network")
    q.add_argument(
        "--sigmas",
        default="0.2,0.1,0.05,0.025,0.0125",
        help="comma-separated noise levels (halving them gives the log-log slopes)",
    )
    q.add_argument(
        "--estimator",
        choices=["control", "antithetic", "plain"],
        default="control",
        help="Monte Carlo estimator (control: antithetic + quadratic control variate)",
    )
    q.set_defaults(func=run_propositions_cmd)


def run_propositions_cmd(args: argparse.Namespace) -> int:
    from kdlab.verify.propositions import (  # noqa: PLC0415 - torch.func import is slow
        format_report,
        run_propositions,
        save_report,
    )

    if args.samples < 2:
        raise ConfigError(f"--samples must be >= 2, got {args.samples}")
    if args.points < 1:
        raise ConfigError(f"--points must be >= 1, got {args.points}")
    try:
        sigmas = [float(s) for s in args.sigmas.split(",") if s.strip()]
    except ValueError:
        raise ConfigError(
            f"--sigmas must be comma-separated numbers, got {args.sigmas!r}"
        ) from None
    if len(sigmas) < 2 or any(s <= 0 for s in sigmas):
        raise ConfigError(f"--sigmas needs at least two positive values, got {args.sigmas!r}")
    sigmas = sorted(sigmas, reverse=True)
    start = time.time()
    common = dict(
        samples=args.samples,
        seed=args.seed,
        sigmas=sigmas,
        points=args.points,
        estimator=args.estimator,
    )
    report = run_propositions(**common)
    random_points = run_propositions(
        **common, claims=(1, 3), cases=("relu",), away_from_kinks=False
    )
    paths = save_report(report, args.out, random_points)
    print(format_report(report, random_points))
    print(f"\n[{time.time() - start:.1f} s] wrote " + ", ".join(str(p) for p in paths.values()))
    return 0
