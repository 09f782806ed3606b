"""The report folder of a benchmark: every run in a CSV, a markdown table, two plots.

Numbers are honest about what they are: the test score of the epoch selected on the
validation split (``best-val``) and of the last epoch side by side, mean +- sample
standard deviation over seeds, the number of seeds, and the gain over the baseline
(the vanilla student unless the protocol names another) computed seed by seed (same
seed, same data order) before averaging, with the 95% Student-t interval of that mean
gain, and the mean wall time of one run. One table per pair and condition.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kdlab.bench.protocol import BASELINE, METHOD, TEACHER, Protocol
from kdlab.bench.run import RunRecord
from kdlab.report import markdown_table, mean_std, write_csv

CSV_NAME = "runs.csv"
TABLE_NAME = "table.md"
GAIN_PLOT = "gain.png"
CURVES_PLOT = "curves.png"
LABELS = {"acc1": "test acc", "acc5": "test top-5 acc"}

Group = tuple[str, str]  # (pair, condition)


def scores(results: dict[str, Any]) -> tuple[str, float, float, float | None]:
    """``(metric, test best-val, test last, val)`` of a run: the recipe's selection
    metric (``recall@1``, ...), or top-1 accuracy in results written before evaluators."""
    if "test_score_best" in results:
        return (
            str(results.get("select") or "acc1"),
            float(results["test_score_best"]),
            float(results["test_score_last"]),
            results.get("val_score"),
        )
    return "acc1", results["test_acc_best"], results["test_acc_last"], results.get("val_acc")


def score_label(rows: Sequence[dict[str, Any]]) -> str:
    """What the score columns hold: ``test acc``, ``test recall@1``..."""
    metrics = sorted({str(r["metric"]) for r in rows}) or ["acc1"]
    return " / ".join(LABELS.get(m, f"test {m}") for m in metrics)


def _metric(results: dict[str, Any], name: str) -> float | str:
    """A test metric of the selected epoch other than the selection metric ('' if none)."""
    best = results.get("test_best")
    return float(best[name]) if isinstance(best, dict) and name in best else ""


def run_rows(records: Sequence[RunRecord], proto: Protocol | None = None) -> list[dict[str, Any]]:
    """One CSV row per run, with the gain over the baseline of the same seed."""
    extra = proto.spec.extra_metrics if proto else []
    baseline: dict[tuple[str, str, int], dict[str, Any]] = {}
    teacher_on: dict[tuple[str, str, Path], dict[str, Any]] = {}
    for r in records:
        s = r.spec
        if s.kind == BASELINE:
            baseline[(s.pair, s.condition, s.seed)] = r.results
        elif s.kind == TEACHER:
            teacher_on[(s.pair, s.condition, s.run_dir)] = r.results
    rows = []
    for r in records:
        s, res = r.spec, r.results
        metric, best, last, val = scores(res)
        base = baseline.get((s.pair, s.condition, s.seed)) if s.kind == METHOD else None
        teacher: dict[str, Any] | None = None
        if s.teacher is not None:
            teacher = teacher_on.get((s.pair, s.condition, s.teacher.run_dir)) or teacher_on.get(
                (s.pair, "", s.teacher.run_dir)
            )
        row: dict[str, Any] = {
            "pair": s.pair,
            "condition": s.condition,
            "method": s.method,
            "kind": s.kind,
            "seed": s.seed,
            "student": s.cfg.student.name,
            "teacher": s.cfg.teacher.name if s.cfg.teacher else "",
            "selection": res.get("selection"),
            "best_epoch": res.get("best_epoch"),
            "metric": metric,
            "val_best": val,
            "test_best": best,
            "test_last": last,
            "gain_best": best - scores(base)[1] if base else "",
            "gain_last": last - scores(base)[2] if base else "",
            "teacher_best": scores(teacher)[1] if teacher else "",
            **{f"test_{m}_best": _metric(res, m) for m in extra},
            "params": res.get("params"),
            "wall_time_s": round(float(res.get("wall_time_s", 0.0)), 2),
            "run_dir": str(s.run_dir),
            **{f"info_{k}": v for k, v in r.info.items()},
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

    For paired gains (method minus baseline, seed by seed): an interval entirely below
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


def groups(proto: Protocol) -> list[Group]:
    """The tables of a report: one per pair and condition."""
    conds = list(proto.spec.conditions) or [""]
    return [(p.label, c) for p in proto.spec.pairs for c in conds]


def group_title(proto: Protocol, group: Group) -> str:
    pair, cond = group
    if not cond:
        return pair
    return f"{pair}, {proto.spec.conditions[cond].label or cond}"


def _group_rows(rows: list[dict[str, Any]], group: Group) -> dict[str, list[dict[str, Any]]]:
    """Rows of one table by arm: the teacher (tested on this condition's data when it
    differs from its own), the baseline, the methods."""
    pair, cond = group
    by: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        if row["pair"] == pair and row["condition"] == cond:
            by[TEACHER if row["kind"] == TEACHER else row["method"]].append(row)
    if not by.get(TEACHER):  # the teacher's own rows (trained once for every condition)
        by[TEACHER] = [
            r for r in rows if r["pair"] == pair and r["kind"] == TEACHER and not r["condition"]
        ]
    return by


def _info(rows: list[dict[str, Any]], keys: list[str]) -> str:
    """Pre-step facts (pseudo-labels kept, their accuracy...) averaged over seeds."""
    parts = []
    for key in keys:
        vals = [float(r[key]) for r in rows if isinstance(r.get(key), (int, float))]
        if vals:
            parts.append(f"{key[5:]} {sum(vals) / len(vals):.4g}")
    return ", ".join(parts) or "-"


def summary_tables(proto: Protocol, rows: list[dict[str, Any]]) -> str:
    """Markdown: one table per pair and condition, arms as rows."""
    name = score_label(rows)
    refs = {p.label: p.reference for p in proto.spec.pairs}
    any_ref = any(refs.values())
    headers = [
        "method",
        "seeds",
        f"{name}, best-val epoch",
        f"{name}, last epoch",
        "gain (best-val)",
        "gain 95% CI",
        "gain (last)",
        "time/run (s)",
    ]
    extra = proto.spec.extra_metrics
    headers[4:4] = [f"test {m}, best-val epoch" for m in extra]
    if any_ref:
        headers.append("published (last, 1 run)")
    info_keys = sorted({k for r in rows for k in r if k.startswith("info_")} - {"info_tested_on"})
    if info_keys:
        headers.append("pre-step (mean)")
    parts = []
    for group in groups(proto):
        by = _group_rows(rows, group)
        table_rows = []
        for m in [TEACHER, proto.baseline_name, *proto.methods]:
            group_rows = by.get(m, [])
            if not group_rows:
                continue
            gb = [r["gain_best"] for r in group_rows if r["gain_best"] != ""]
            gl = [r["gain_last"] for r in group_rows if r["gain_last"] != ""]
            cells = [
                m,
                len(group_rows),
                _fmt([r["test_best"] for r in group_rows]),
                _fmt([r["test_last"] for r in group_rows]),
                *(
                    _fmt([r[f"test_{m}_best"] for r in group_rows if r[f"test_{m}_best"] != ""])
                    for m in extra
                ),
                _fmt(gb, signed=True),
                _fmt_interval(gb),
                _fmt(gl, signed=True),
                f"{sum(float(r['wall_time_s']) for r in group_rows) / len(group_rows):.0f}",
            ]
            if any_ref:
                ref = refs[group[0]].get("student" if m == proto.baseline_name else m)
                cells.append(f"{ref:.2f}" if ref is not None else "-")
            if info_keys:
                cells.append(_info(group_rows, info_keys))
            table_rows.append(cells)
        parts.append(f"### {group_title(proto, group)}\n\n" + markdown_table(headers, table_rows))
    return "\n\n".join(parts)


def _subplots(n: int, width: float) -> tuple[Any, Any]:
    import matplotlib  # noqa: PLC0415 - heavy, only for reports

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, axes = plt.subplots(1, n, figsize=(width * n, 4.5), squeeze=False)
    return plt, (fig, axes[0])


def _plot_gain(proto: Protocol, rows: list[dict[str, Any]], path: Path) -> None:
    methods, tables = proto.methods, groups(proto)
    plt, (fig, axes) = _subplots(len(tables), max(4.0, 0.45 * len(methods) + 2))
    for ax, group in zip(axes, tables):
        by = _group_rows(rows, group)
        xs = range(len(methods))
        for offset, col, lab in ((-0.2, "gain_best", "best-val epoch"), (0.2, "gain_last", "last")):
            means, stds = [], []
            for m in methods:
                vals = [r[col] for r in by.get(m, []) if r[col] != ""]
                mu, sd = mean_std(vals) if vals else (math.nan, 0.0)
                means.append(mu)
                stds.append(sd)
            ax.bar([x + offset for x in xs], means, 0.4, yerr=stds, capsize=3, label=lab)
        ax.axhline(0.0, color="black", linewidth=0.8)
        ax.set_xticks(list(xs))
        ax.set_xticklabels(methods, rotation=60, ha="right")
        ax.set_ylabel(f"{score_label(rows)} gain over {proto.baseline_name} (points)")
        ax.set_title(
            f"{proto.name}: {group_title(proto, group)}\nmean +- std over seeds", fontsize=9
        )
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_curves(proto: Protocol, records: Sequence[RunRecord], path: Path) -> None:
    val_keys = {f"val_{scores(r.results)[0]}" for r in records}
    tables = groups(proto)
    methods = [proto.baseline_name, *proto.methods]
    plt, (fig, axes) = _subplots(len(tables), 7.0)
    cmap = plt.get_cmap("tab20")
    for ax, (pair, cond) in zip(axes, tables):
        for i, m in enumerate(methods):
            curves: dict[int, list[float]] = defaultdict(list)
            for r in records:
                s = r.spec
                if s.pair != pair or s.condition != cond or s.method != m or s.kind == TEACHER:
                    continue
                for row in r.metrics:
                    for key in val_keys & set(row) if row.get("stage") == "main" else ():
                        curves[int(row["epoch"])].append(float(row[key]))
            if not curves:
                continue
            epochs = sorted(curves)
            base = m == proto.baseline_name
            ax.plot(
                epochs,
                [sum(curves[e]) / len(curves[e]) for e in epochs],
                label=m,
                color=cmap(i % 20),
                linewidth=2.0 if base else 1.2,
                linestyle="--" if base else "-",
            )
        ax.set_xlabel("epoch (main stage)")
        ax.set_ylabel("validation score (the selection metric), mean over seeds")
        ax.set_title(f"{proto.name}: {group_title(proto, (pair, cond))}", fontsize=9)
        if ax.get_legend_handles_labels()[0]:
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
    rows = run_rows(records, proto)
    paths = {"csv": folder / CSV_NAME, "table": folder / TABLE_NAME}
    write_csv(paths["csv"], rows)
    seeds = sorted({r.spec.seed for r in records if r.spec.kind != TEACHER})
    score = score_label(rows)
    lines = [
        f"# Benchmark `{proto.name}`",
        "",
        proto.spec.description.strip(),
        "",
        f"Seeds: {seeds} ({len(seeds)} per cell). {score.capitalize()} (%) of the epoch "
        "selected on the validation split and of the last epoch, mean +- sample std over "
        f"seeds. Gain = the student with the method minus the {proto.baseline_name} student, "
        "same seed, then averaged; its 95% Student-t interval; mean wall time of one run.",
    ]
    if any(r.info.get("tested_on") for r in records):
        lines += [
            "",
            "Where a condition changes the test split, the teacher row is the teacher (trained "
            "on its own data) tested on that split.",
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
