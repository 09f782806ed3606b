"""The demo: a teacher, then students with each method, over seeds, on bundled digits.

Everything here is the public API at work: recipes as dicts, ``train``, the report
helpers. Test accuracy is that of the best-on-validation epoch (and the last epoch
beside it); the test split is never used for selection.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from kdlab import recipes
from kdlab.config import load_config, read_yaml
from kdlab.engine import RunResult, train
from kdlab.errors import ConfigError
from kdlab.methods import METHODS
from kdlab.report import fmt_mean_std, markdown_table, mean_std, write_csv

RECIPES = recipes.folder("digits")

BASE: dict[str, Any] = {
    "data": {"name": "digits", "batch_size": 64},
    "train": {
        "epochs": 20,
        "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4},
        "schedule": {"name": "cosine"},
        "progress": False,
    },
}
TEACHER = "cnn_medium"
STUDENT = "cnn_small"
TEACHER_EPOCHS = 30

# The demo's own recipes for the foundation methods; other methods come from
# configs/digits/<method>.yaml (their terms and stages), run on the same protocol.
BUILTIN_TERMS: dict[str, list[dict[str, Any]]] = {
    "vanilla": [{"method": "ce"}],
    "kd": [{"method": "ce", "weight": 0.1}, {"method": "kd", "weight": 0.9, "T": 4.0}],
    "logits": [{"method": "logits", "weight": 1.0}],
}


@dataclass
class DemoRow:
    method: str
    results: list[RunResult]


# A cross-architecture pair on digits: the plain-CNN teacher and a residual student.
# Recipes name cnn_small's taps; this maps them onto resnet8's (same channels and sizes).
CROSS_STUDENT = "resnet8"
CROSS_TAP_MAP = {"stages.0": "layer1.0", "stages.1": "layer2.0"}


def remap_student_taps(distill: dict[str, Any], tap_map: dict[str, str]) -> dict[str, Any]:
    """A copy of a ``distill`` section with student tap paths renamed by prefix."""

    def rename(tap: str) -> str:
        for old, new in tap_map.items():
            if tap == old or tap.startswith((old + ".", old + ":")):
                return new + tap[len(old) :]
        return tap

    out = copy.deepcopy(distill)
    for term in out.get("terms", []):
        if isinstance(term.get("student"), list):
            term["student"] = [rename(t) for t in term["student"]]
    return out


def method_recipe(method: str, recipes: Path = RECIPES) -> dict[str, Any]:
    """The ``distill`` section (and student/teacher overrides) for a method."""
    if method in BUILTIN_TERMS:
        return {"distill": {"terms": copy.deepcopy(BUILTIN_TERMS[method])}}
    path = recipes / f"{method}.yaml"
    if not path.is_file():
        raise ConfigError(
            f"no demo recipe for method {method!r}: expected {str(path)!r}; "
            f"known: {', '.join(sorted(BUILTIN_TERMS))} and the files in {str(recipes)!r}"
        )
    data = read_yaml(path)
    return {"distill": data.get("distill", {"terms": [{"method": method}]})}


def _fits_demo(path: Path) -> bool:
    """A recipe made for the demo's protocol: clean digits classification, cnn_small.

    Methods with their own protocol (CQD's degraded inputs, DarkRank's retrieval) have
    recipes for other data or models; ``kdlab protocol ...`` runs those.
    """
    if not path.is_file():
        return False
    data = read_yaml(path)
    return (
        data.get("data", {}).get("name", "digits") == "digits"
        and data.get("student", {}).get("name") == STUDENT
        and not data.get("distill", {}).get("views")
    )


def resolve_methods(spec: str | Sequence[str]) -> list[str]:
    if isinstance(spec, str):
        names = [m.strip() for m in spec.split(",") if m.strip()]
    else:
        names = list(spec)
    if names == ["all"]:
        extra = [m for m in METHODS.names() if m not in ("ce", *BUILTIN_TERMS)]
        extra = [m for m in extra if _fits_demo(RECIPES / f"{m}.yaml")]
        names = ["kd", "logits", *extra]
    out = ["vanilla"] + [m for m in names if m != "vanilla"]
    for m in out:
        if m not in BUILTIN_TERMS and m not in METHODS:
            raise ConfigError(f"unknown method {m!r} for the demo; see `kdlab ls methods`")
    return out


def run_demo(
    methods: str | Sequence[str] = "kd,logits",
    seeds: int = 3,
    out: str | Path = "runs/demo",
    epochs: int | None = None,
    teacher_epochs: int | None = None,
    student: str = STUDENT,
    teacher: str = TEACHER,
    show_progress: bool = True,
    tap_map: dict[str, str] | None = None,
) -> tuple[str, list[DemoRow], float]:
    """Train the teacher, then every method's student for each seed; return the table."""
    start = time.time()
    out = Path(out)
    names = resolve_methods(methods)
    base = copy.deepcopy(BASE)
    if epochs is not None:
        base["train"]["epochs"] = epochs
    t_epochs = teacher_epochs if teacher_epochs is not None else TEACHER_EPOCHS

    teacher_cfg = load_config(
        {
            **base,
            "name": "teacher",
            "output_dir": str(out),
            "student": {"name": teacher},
            "train": {**base["train"], "epochs": t_epochs},
        }
    )
    runs: list[tuple[str, int]] = [(m, s) for m in names for s in range(seeds)]
    bar = tqdm(total=len(runs) + 1, desc="demo", disable=not show_progress, dynamic_ncols=True)
    bar.set_postfix_str("teacher")
    teacher_result = train(teacher_cfg, overwrite=True)
    bar.update(1)

    rows: dict[str, DemoRow] = {m: DemoRow(m, []) for m in names}
    for method, seed in runs:
        bar.set_postfix_str(f"{method} seed {seed}")
        distill = method_recipe(method)["distill"]
        recipe = {
            **base,
            "distill": remap_student_taps(distill, tap_map or {}),
            "name": f"{method}/seed{seed}",
            "seed": seed,
            "output_dir": str(out),
            "student": {"name": student},
        }
        if method != "vanilla":
            recipe["teacher"] = {"name": teacher, "checkpoint": str(out / "teacher")}
        rows[method].results.append(train(load_config(recipe), overwrite=True))
        bar.update(1)
    bar.close()
    wall = time.time() - start
    table = format_table(teacher_result, list(rows.values()), seeds, wall, teacher, student)
    write_csv(
        out / "results.csv",
        [
            {"method": r.method, "seed": s, **res.to_json()}
            for r in rows.values()
            for s, res in enumerate(r.results)
        ],
    )
    (out / "results.md").write_text(table + "\n")
    return table, list(rows.values()), wall


def format_table(
    teacher: RunResult,
    rows: list[DemoRow],
    seeds: int,
    wall: float,
    teacher_name: str = TEACHER,
    student_name: str = STUDENT,
) -> str:
    vanilla = mean_std(r.test_acc_best for r in rows[0].results)[0] if rows else 0.0
    body = [
        [
            f"teacher ({teacher_name})",
            f"{teacher.test_acc_best:.2f} (1 run)",
            f"{teacher.test_acc_last:.2f}",
            "",
            f"{teacher.params:,}",
            f"{teacher.wall_time_s:.1f}",
        ]
    ]
    for row in rows:
        best = [r.test_acc_best for r in row.results]
        last = [r.test_acc_last for r in row.results]
        gain = mean_std(best)[0] - vanilla
        body.append(
            [
                row.method,
                fmt_mean_std(best),
                fmt_mean_std(last),
                "" if row.method == "vanilla" else f"{gain:+.2f}",
                f"{row.results[0].params:,}",
                f"{mean_std(r.wall_time_s for r in row.results)[0]:.1f}",
            ]
        )
    headers = [
        "method",
        "test acc % (best val)",
        "test acc % (last)",
        "gain",
        "params",
        "time/run s",
    ]
    note = (
        f"digits (scikit-learn), {teacher_name} -> {student_name}, mean +- std over {seeds} "
        "seeds; "
        "'best val' = test accuracy of the epoch with the best validation accuracy; "
        f"total wall time {wall:.0f} s"
    )
    return markdown_table(headers, body) + "\n\n" + note
