"""The report folder of a benchmark: every run in a CSV, a markdown table, two plots.

Numbers are honest about what they are: test accuracy of the epoch selected on the
validation split (``best-val``) and of the last epoch side by side, mean +- sample
standard deviation over seeds, the number of seeds, and the gain over the vanilla
student computed seed by seed (same seed, same data order) before averaging, with the
95% Student-t interval of that mean gain, and the mean wall time of one run.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kdlab.bench.protocol import TEACHER, VANILLA, Protocol
from kdlab.bench.run import RunRecord
from kdlab.report import markdown_table, mean_std, write_csv

CSV_NAME = "runs.csv"
TABLE_NAME = "table.md"
GAIN_PLOT = "gain.png"
CURVES_PLOT = "curves.png"


def run_rows(records: Sequence[RunRecord]) -> list[dict[str, Any]]:
    """One CSV row per run, with the gain over the vanilla student of the same seed."""
    vanilla: dict[tuple[str, int], dict[str, Any]] = {}
    teacher: dict[tuple[str, int], dict[str, Any]] = {}
    for r in records:
        key = (r.spec.pair, r.spec.seed)
        if r.spec.kind == VANILLA:
            vanilla[key] = r.results
        elif r.spec.kind == TEACHER:
            teacher[key] = r.results
    rows = []
    for r in records:
        res, key = r.results, (r.spec.pair, r.spec.seed)
        van = vanilla.get(key)
        is_method = r.spec.kind == "method"
        row: dict[str, Any] = {
            "pair": r.spec.pair,
            "method": r.spec.method,
            "kind": r.spec.kind,
            "seed": r.spec.seed,
            "student": r.spec.cfg.student.name,
            "teacher": r.spec.cfg.teacher.name if r.spec.cfg.teacher else "",
            "selection": res.get("selection"),
            "best_epoch": res.get("best_epoch"),
            "val_acc": res.get("val_acc"),
            "test_acc_best": res["test_acc_best"],
            "test_acc_last": res["test_acc_last"],
            "gain_best": res["test_acc_best"] - van["test_acc_best"] if is_method and van else "",
            "gain_last": res["test_acc_last"] - van["test_acc_last"] if is_method and van else "",
            "teacher_acc_best": teacher[key]["test_acc_best"] if key in teacher else "",
            "params": res.get("params"),
            "wall_time_s": round(float(res.get("wall_time_s", 0.0)), 2),
            "run_dir": str(r.spec.run_dir),
        }
        rows.append(row)
    return rows


def _fmt(values: list[float], signed: bool = False) -> str:
    if not values:
        return "-"
    m, s = mean_std(values)
    sign = "+" if signed and m >= 0 else ""
    return f"{sign}{m:.2f} +- {s:.2f}"


def mean_interval(values: list[float], level: float = 0.95) -> tuple[float, float] | None:
    """Student-t confidence interval of the mean (None under two values).

    For paired gains (method minus vanilla, seed by seed): an interval entirely below
    zero says the method hurts the student at that confidence.
    """
    if len(values) < 2:
        return None
    from scipy.stats import t  # noqa: PLC0415 - scikit-learn's dependency, slow import

    m, s = mean_std(values)
    half = float(t.ppf(0.5 + level / 2, len(values) - 1)) * s / math.sqrt(len(values))
    return m - half, m + half


def _fmt_interval(values: list[float]) -> str:
    ci = mean_interval(values)
    return "-" if ci is None else f"[{ci[0]:+.2f}, {ci[1]:+.2f}]"


def summary_tables(proto: Protocol, rows: list[dict[str, Any]]) -> str:
    """Markdown: one table per pair, methods as rows."""
    by: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by[(row["pair"], row["method"])].append(row)
    refs = {p.label: p.reference for p in proto.spec.pairs}
    any_ref = any(refs.values())
    parts = []
    for pair in proto.spec.pairs:
        label = pair.label
        methods = [TEACHER, VANILLA] + [m for m in proto.methods]
        headers = [
            "method",
            "seeds",
            "test acc, best-val epoch",
            "test acc, last epoch",
            "gain (best-val)",
            "gain 95% CI",
            "gain (last)",
            "time/run (s)",
        ]
        if any_ref:
            headers.append("published (last, 1 run)")
        table_rows = []
        for m in methods:
            group = by.get((label, m), [])
            if not group:
                continue
            gb = [r["gain_best"] for r in group if r["gain_best"] != ""]
            gl = [r["gain_last"] for r in group if r["gain_last"] != ""]
            cells = [
                m,
                len(group),
                _fmt([r["test_acc_best"] for r in group]),
                _fmt([r["test_acc_last"] for r in group]),
                _fmt(gb, signed=True),
                _fmt_interval(gb),
                _fmt(gl, signed=True),
                f"{sum(float(r['wall_time_s']) for r in group) / len(group):.0f}",
            ]
            if any_ref:
                ref_key = "student" if m == VANILLA else m
                ref = refs[label].get(ref_key)
                cells.append(f"{ref:.2f}" if ref is not None else "-")
            table_rows.append(cells)
        parts.append(f"### {label}\n\n" + markdown_table(headers, table_rows))
    return "\n\n".join(parts)


def _plot_gain(proto: Protocol, rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib  # noqa: PLC0415 - heavy, only for reports

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    methods = list(proto.methods)
    pairs = [p.label for p in proto.spec.pairs]
    fig, axes = plt.subplots(
        1, len(pairs), figsize=(max(4.0, 0.45 * len(methods) + 2) * len(pairs), 4), squeeze=False
    )
    for ax, pair in zip(axes[0], pairs):
        xs = range(len(methods))
        for offset, col, lab in ((-0.2, "gain_best", "best-val epoch"), (0.2, "gain_last", "last")):
            means, stds = [], []
            for m in methods:
                vals = [r[col] for r in rows if r["pair"] == pair and r["method"] == m]
                vals = [v for v in vals if v != ""]
                mu, sd = mean_std(vals) if vals else (math.nan, 0.0)
                means.append(mu)
                stds.append(sd)
            ax.bar([x + offset for x in xs], means, 0.4, yerr=stds, capsize=3, label=lab)
        ax.axhline(0.0, color="black", linewidth=0.8)
        ax.set_xticks(list(xs))
        ax.set_xticklabels(methods, rotation=60, ha="right")
        ax.set_ylabel("test accuracy gain over vanilla (points)")
        ax.set_title(f"{proto.name}: {pair}\nmean +- std over seeds", fontsize=9)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_curves(proto: Protocol, records: Sequence[RunRecord], path: Path) -> None:
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    pairs = [p.label for p in proto.spec.pairs]
    methods = [VANILLA] + list(proto.methods)
    fig, axes = plt.subplots(1, len(pairs), figsize=(7 * len(pairs), 4.5), squeeze=False)
    cmap = plt.get_cmap("tab20")
    for ax, pair in zip(axes[0], pairs):
        for i, m in enumerate(methods):
            curves: dict[int, list[float]] = defaultdict(list)
            for r in records:
                if r.spec.pair != pair or r.spec.method != m:
                    continue
                for row in r.metrics:
                    if row.get("stage") == "main" and "val_acc1" in row:
                        curves[int(row["epoch"])].append(float(row["val_acc1"]))
            if not curves:
                continue
            epochs = sorted(curves)
            ax.plot(
                epochs,
                [sum(curves[e]) / len(curves[e]) for e in epochs],
                label=m,
                color=cmap(i % 20),
                linewidth=2.0 if m == VANILLA else 1.2,
                linestyle="--" if m == VANILLA else "-",
            )
        ax.set_xlabel("epoch (main stage)")
        ax.set_ylabel("validation accuracy (%), mean over seeds")
        ax.set_title(f"{proto.name}: {pair}", fontsize=9)
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(
    proto: Protocol,
    records: Sequence[RunRecord],
    folder: str | Path,
    command: str | None = None,
    plots: bool = True,
    failures: Sequence[tuple[Any, str]] = (),
) -> dict[str, Path]:
    """Write ``runs.csv``, ``table.md`` and the plots into ``folder``; return their paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rows = run_rows(records)
    paths = {"csv": folder / CSV_NAME, "table": folder / TABLE_NAME}
    write_csv(paths["csv"], rows)
    seeds = sorted({r.spec.seed for r in records})
    lines = [
        f"# Benchmark `{proto.name}`",
        "",
        proto.spec.description.strip(),
        "",
        f"Seeds: {seeds} ({len(seeds)} per cell). Test accuracy (top-1, %) of the epoch "
        "selected on the validation split and of the last epoch, mean +- sample std over "
        "seeds. Gain = student with the method minus the vanilla student (cross-entropy "
        "only), same seed, then averaged.",
    ]
    if command:
        lines += ["", f"Command: `{command}`"]
    if proto.spec.reference_note:
        lines += ["", proto.spec.reference_note.strip()]
    lines += ["", summary_tables(proto, rows), ""]
    if failures:
        lines += ["## Failed runs (not in the table; rerun the command to retry them)", ""]
        lines += [f"- `{spec.label}`: {msg.splitlines()[0][:200]}" for spec, msg in failures]
        lines.append("")
    paths["table"].write_text("\n".join(lines))
    if plots:
        paths["gain_plot"] = folder / GAIN_PLOT
        paths["curves_plot"] = folder / CURVES_PLOT
        _plot_gain(proto, rows, paths["gain_plot"])
        _plot_curves(proto, records, paths["curves_plot"])
    return paths
