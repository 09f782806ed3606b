"""kdlab's performance suite: what distillation costs beyond the physical minimum.

A script, not a test. For every registered method on the digits pair and the CIFAR
reference pairs (batch 64, random data), it measures median step times of

- the distillation step, through the real engine (``kdlab.engine.train`` on a synthetic
  in-memory split, timed between consecutive iterations: loader, seeding, Distiller,
  backward, optimiser step, logging -- everything a training run does per step);
- a plain student training step (PyTorch only: forward, cross-entropy, zero_grad,
  backward, SGD step);
- teacher inference alone (PyTorch only: eval mode, ``inference_mode``).

``overhead = distillation step / (student step + teacher inference)``: 1.0 is the
physical minimum of running both networks; adapters and relation losses add real work
on top, the rest is kdlab's own overhead. Then the speed options (``channels_last``,
bf16 autocast, ``torch.compile``, teacher-output caching) are measured on a few methods.

    OMP_NUM_THREADS=2 PYTHONPATH=src python benchmarks/perf.py --out benchmarks/RESULTS.md

Pairs whose models are not registered (the CIFAR zoo) are skipped and listed.

``--vs-repdistiller PATH`` instead measures kdlab's KD step side by side with
RepDistiller's own ``train_distill`` (see ``benchmarks/sidebyside.py``) and replaces
only that section of the results file.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import yaml

from kdlab import recipes
from kdlab.bench import load_protocol
from kdlab.config import load_config
from kdlab.data import DataBundle, TensorSplit
from kdlab.engine import train
from kdlab.engine.handlers import Timing
from kdlab.methods import METHODS
from kdlab.models import MODELS, create_model

ROOT = Path(__file__).resolve().parents[1]

# The clock: "thread" is the CPU time of the calling thread. With one intra-op thread
# all work runs on it, so it equals wall time on an idle machine and is unaffected by
# other jobs on a shared one (which only delay the thread). "wall" is perf_counter.
CLOCK: Callable[[], float] = time.thread_time

# pair -> (teacher, student, input shape, classes)
PAIRS: dict[str, tuple[str, str, tuple[int, int, int], int]] = {
    "digits": ("cnn_medium", "cnn_small", (1, 8, 8), 10),
    "resnet56-resnet20": ("resnet56", "resnet20", (3, 32, 32), 100),
    "wrn_40_2-wrn_16_2": ("wrn_40_2", "wrn_16_2", (3, 32, 32), 100),
    "resnet32x4-resnet8x4": ("resnet32x4", "resnet8x4", (3, 32, 32), 100),
    "vgg13-vgg8": ("vgg13", "vgg8", (3, 32, 32), 100),
}
LOGIT_METHODS = {"kd", "logits", "dkd"}
FEATURE_METHODS = {"fitnet", "at", "nst", "ab", "ft", "fsp"}


# ------------------------------------------------------------------ timing


def median_ms(fn: Callable[[], Any], steps: int, warmup: int) -> float:
    """The median of ``steps`` calls (after ``warmup``), in ms of CLOCK."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        t0 = CLOCK()
        fn()
        times.append(CLOCK() - t0)
    return 1000.0 * statistics.median(times)


def plain_student_step(student: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, **opt: Any):
    opt_ = torch.optim.SGD(student.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    student.train()
    amp = opt.get("amp")

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp == "bf16"):
            loss = F.cross_entropy(student(x), y)
        opt_.zero_grad(set_to_none=True)
        loss.backward()
        opt_.step()

    return step


def plain_teacher_inference(teacher: torch.nn.Module, x: torch.Tensor, **opt: Any):
    teacher.eval()
    amp = opt.get("amp")

    def step() -> None:
        with (
            torch.inference_mode(),
            torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp == "bf16"),
        ):
            teacher(x)

    return step


def _noop() -> None:
    return None


def synthetic_bundle(shape: tuple[int, ...], classes: int, n: int, seed: int = 0) -> DataBundle:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *shape, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    test = TensorSplit(x[:64], y[:64])
    return DataBundle(
        train=TensorSplit(x, y),
        val=None,
        test=test,
        num_classes=classes,
        in_channels=shape[0],
        image_size=(shape[1], shape[2]),
        name="synthetic",
    )


def engine_step_ms(
    recipe: dict[str, Any],
    bundle: DataBundle,
    steps: int,
    warmup: int,
    baseline: tuple[Callable[[], Any], Callable[[], Any]] | None = None,
) -> dict[str, float]:
    """Time between consecutive iterations of a real ``train`` run (fastest and median).

    With ``baseline = (student_step, teacher_inference)`` both are timed by the
    engine's Timing handler between engine iterations (and excluded from them), so each
    distillation step is compared with a baseline measured at the same moment: on a
    shared machine the load changes within seconds.
    """
    cfg = load_config(recipe)
    per_epoch = len(bundle.train) // cfg.data.batch_size  # drop_last
    skip = (cfg.train.epochs - 1) * per_epoch  # time the last epoch only (cache_teacher)
    base_s: list[float] = []
    base_t: list[float] = []

    def between() -> None:
        if baseline is not None:
            for fn, out in zip(baseline, (base_s, base_t)):
                t0 = CLOCK()
                fn()
                out.append(CLOCK() - t0)

    timing = Timing(clock=CLOCK, between=between)
    with tempfile.TemporaryDirectory() as d:
        train(cfg, run_dir=d, bundle=bundle, handlers=[timing])
    deltas = [s for _, it, s in timing.records if it > skip + 1][warmup : warmup + steps]
    res = {"distill_ms": 1000.0 * statistics.median(deltas), "distill_min_ms": 1000 * min(deltas)}
    if baseline is not None:
        # the baseline after iteration i+1 pairs with the delta that ended there
        s_ms = base_s[skip + 1 :][warmup : warmup + steps]
        t_ms = base_t[skip + 1 :][warmup : warmup + steps]
        res["student_ms"] = 1000.0 * statistics.median(s_ms)
        res["teacher_ms"] = 1000.0 * statistics.median(t_ms)
        res["ratio"] = res["distill_ms"] / (res["student_ms"] + res["teacher_ms"])
        res["ratio_min"] = res["distill_min_ms"] / (1000 * (min(s_ms) + min(t_ms)))
    return res


# ------------------------------------------------------------------ recipes


def _digits_recipe(method: str) -> dict[str, Any] | None:
    if f"digits/{method}" in recipes.names("digits"):
        return yaml.safe_load(recipes.find(f"digits/{method}").read_text()).get("distill")
    return None


def method_distill(method: str, pair: str) -> dict[str, Any]:
    """The method's distill section for a pair: digits recipes, the cifar100 protocol's
    terms and per-pair taps, or the method alone with its own defaults."""
    if pair == "digits":
        distill = _digits_recipe(method)
        if distill is None and method in _BENCH_DIGITS.methods:
            distill = _BENCH_DIGITS.methods[method]
        distill = copy.deepcopy(distill) if distill else None
    else:
        distill = copy.deepcopy(_CIFAR.methods.get(method) or _digits_recipe(method))
        taps = next((p.taps for p in _CIFAR.spec.pairs if p.label == pair), {})
        if distill is not None:
            for term in distill["terms"]:
                override = taps.get(term.get("name") or "") or taps.get(term["method"])
                if override:
                    term.update(copy.deepcopy(override))
                elif "student" in term and pair != "digits":
                    # digits taps do not exist in CIFAR models: use the method defaults
                    term.pop("student", None)
                    term.pop("teacher", None)
    if distill is None:
        distill = {"terms": [{"method": "ce"}, {"method": method}]}
    distill["stages"] = []  # pre-stages are separate training phases, not the step
    return distill


def recipe_for(pair: str, distill: dict[str, Any] | None, **train_opts: Any) -> dict[str, Any]:
    t, s, _, _ = PAIRS[pair]
    recipe: dict[str, Any] = {
        "name": "perf",
        "student": {"name": s},
        "data": {"batch_size": 64},
        "train": {
            "epochs": 1,
            "device": "cpu",
            "optimizer": {"name": "sgd", "lr": 0.01},
            "schedule": {"name": "constant"},
            **train_opts,
        },
    }
    if distill is not None:
        recipe["teacher"] = {"name": t}
        recipe["distill"] = distill
    return recipe


# ------------------------------------------------------------------ machine


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        load = os.getloadavg()
    except OSError:
        load = (float("nan"),) * 3
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "python": sys.version.split()[0],
        "load_avg": [round(v, 2) for v in load],
    }


# ------------------------------------------------------------------ suite


def measure_pair(
    pair: str, methods: list[str], steps: int, warmup: int, log: Callable[[str], None]
) -> list[dict[str, Any]]:
    t_name, s_name, shape, classes = PAIRS[pair]
    torch.manual_seed(0)
    x = torch.randn(64, *shape)
    y = torch.randint(0, classes, (64,))
    student = create_model(s_name, classes, shape[0])
    teacher = create_model(t_name, classes, shape[0])
    baseline = (plain_student_step(student, x, y), plain_teacher_inference(teacher, x))
    bundle = synthetic_bundle(shape, classes, 64 * (steps + warmup + 3))
    rows = []
    # vanilla: the engine's CE-only step against the plain student step alone
    van = engine_step_ms(recipe_for(pair, None), bundle, steps, warmup, (baseline[0], _noop))
    rows.append(dict(pair=pair, method="(vanilla: ce, no teacher)", **van))
    log(f"{pair}: vanilla {van}")
    for m in methods:
        row: dict[str, Any] = dict(pair=pair, method=m)
        try:
            recipe = recipe_for(pair, method_distill(m, pair))
            row.update(engine_step_ms(recipe, bundle, steps, warmup, baseline))
            log(f"{pair}: {m} {row}")
        except Exception as err:  # record and go on: one method must not stop the suite
            row.update(error=f"{type(err).__name__}: {str(err).splitlines()[0][:160]}")
            log(f"{pair}: {m} FAILED {row['error']}")
        rows.append(row)
    return rows


def measure_options(
    pair: str, methods: list[str], steps: int, warmup: int, log: Callable[[str], None]
) -> list[dict[str, Any]]:
    """channels_last, bf16 autocast, torch.compile and teacher caching on a few methods."""
    t_name, s_name, shape, classes = PAIRS[pair]
    torch.manual_seed(0)
    x = torch.randn(64, *shape)
    y = torch.randint(0, classes, (64,))
    bundle = synthetic_bundle(shape, classes, 64 * (steps + warmup + 3))
    rows = []
    options: dict[str, dict[str, Any]] = {
        "default": {},
        "channels_last": {"channels_last": True},
        "bf16 autocast": {"amp": "bf16"},
        # two epochs, the second timed: the cache fills during the first
        "cache_teacher (2nd epoch)": {"cache_teacher": True, "epochs": 2},
        "torch.compile": {"compile": True},
    }
    for opt_name, opts in options.items():
        student = create_model(s_name, classes, shape[0])
        teacher = create_model(t_name, classes, shape[0])
        xs = x
        if opts.get("channels_last"):
            student = student.to(memory_format=torch.channels_last)
            teacher = teacher.to(memory_format=torch.channels_last)
            xs = x.contiguous(memory_format=torch.channels_last)
        row: dict[str, Any] = {"pair": pair, "option": opt_name}
        baseline = None
        try:
            if opts.get("compile"):
                student.compile()
                teacher.compile()
            t0 = time.perf_counter()
            baseline = (
                plain_student_step(student, xs, y, **opts),
                plain_teacher_inference(teacher, xs, **opts),
            )
            row["student_ms"] = median_ms(baseline[0], steps, warmup)
            row["teacher_ms"] = median_ms(baseline[1], steps, warmup)
            if opts.get("compile"):
                row["note"] = f"plain models, compile included: {time.perf_counter() - t0:.0f} s"
        except Exception as err:
            row["error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:160]}"
            baseline = None
        for m in methods:
            try:
                res = engine_step_ms(
                    recipe_for(pair, method_distill(m, pair), **opts), bundle, steps, warmup
                )
                row[m] = res["distill_ms"]
            except Exception as err:
                row[m] = f"fails: {type(err).__name__}: {str(err).splitlines()[0][:120]}"
        log(f"options {pair} {opt_name}: {row}")
        rows.append(row)
    return rows


# ------------------------------------------------------------------ report


def _f(v: Any, digits: int = 1) -> str:
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def render(results: dict[str, Any]) -> str:
    m = results["machine"]
    lines = [
        "# kdlab performance results",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']}, "
        f"{m['threads']} intra-op threads, Python {m['python']}. Load average at the "
        f"start: {m['load_avg']} (the machine is shared with other jobs).",
        "",
        f"Command: `{results['command']}`",
        "",
        f"Batch 64, random data; {results['steps']} timed steps (CIFAR pairs: "
        f"{results['cifar_steps']}) after {results['warmup']} warm-up steps, clock "
        f"`{results['clock']}`. Distillation step = one iteration of the real engine "
        "(kdlab.engine.train on an in-memory split: loader, seeding, Distiller, backward, "
        "optimiser, logging); student step (forward, CE, zero_grad, backward, SGD step) and "
        "teacher inference (eval, inference_mode) are plain PyTorch, timed right after "
        "every engine iteration. Times are medians. With clock `thread` they are CPU time "
        "of the training thread (one intra-op thread): equal to wall time on an idle "
        "machine, and not inflated by the other jobs sharing this one. Ratio = distill / "
        "(student + teacher); 1.00 is the physical minimum; the ratio of the fastest steps "
        "is shown beside it. The vanilla row compares the engine's CE-only step with the "
        "plain student step alone. Methods with adapters or relation losses do real work "
        "beyond the minimum. Pre-stages (FitNets hints, AB/FT/FSP initialisation) are not "
        "included.",
        "",
    ]
    if results.get("skipped"):
        lines += [f"Skipped pairs (models not registered): {', '.join(results['skipped'])}", ""]
    lines += ["## Overhead per method", ""]
    for pair in results["pairs"]:
        rows = [r for r in results["rows"] if r["pair"] == pair]
        if not rows:
            continue
        lines += [
            f"### {pair}",
            "",
            "| method | family | distill step (ms) | student step (ms) | teacher inference (ms) "
            "| ratio | ratio of fastest |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        for r in rows:
            fam = (
                "logit"
                if r["method"] in LOGIT_METHODS
                else "feature"
                if r["method"] in FEATURE_METHODS
                else ""
                if r["method"].startswith("(")
                else "other"
            )
            if "error" in r:
                lines.append(f"| {r['method']} | {fam} | failed: {r['error']} | | | | |")
            else:
                lines.append(
                    f"| {r['method']} | {fam} | {r['distill_ms']:.1f} | {r['student_ms']:.1f} "
                    f"| {r['teacher_ms']:.1f} | {r['ratio']:.2f} | {r['ratio_min']:.2f} |"
                )
        lines.append("")
    before = results.get("before")
    if before:
        lines += [
            "## Speed work: before and after",
            "",
            before.get("note", ""),
            "",
            "| pair | method | distill step before (ms) | ratio before | distill step after "
            "(ms) | ratio after |",
            "| --- | --- | ---: | ---: | ---: | ---: |",
        ]
        old = {(r["pair"], r["method"]): r for r in before["rows"] if "error" not in r}
        for r in results["rows"]:
            b = old.get((r["pair"], r["method"]))
            if b is None or "error" in r:
                continue
            lines.append(
                f"| {r['pair']} | {r['method']} | {b['distill_ms']:.1f} | {b['ratio']:.2f} "
                f"| {r['distill_ms']:.1f} | {r['ratio']:.2f} |"
            )
        lines.append("")
    if results.get("options"):
        lines += ["## Speed options", ""]
        opt_methods = results["option_methods"]
        lines += [
            "| pair | option | student step (ms) | teacher inference (ms) | "
            + " | ".join(f"{m} distill step (ms)" for m in opt_methods)
            + " | note |",
            "| --- | --- | ---: | ---: | " + " | ".join("---:" for _ in opt_methods) + " | --- |",
        ]
        for r in results["options"]:
            lines.append(
                f"| {r['pair']} | {r['option']} | {_f(r.get('student_ms', '-'))} | "
                f"{_f(r.get('teacher_ms', '-'))} | "
                + " | ".join(_f(r.get(m, "-")) for m in opt_methods)
                + f" | {r.get('error', r.get('note', ''))} |"
            )
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    p.add_argument("--pairs", nargs="+", default=list(PAIRS))
    p.add_argument("--methods", nargs="+", help="default: every registered method but ce")
    p.add_argument(
        "--cifar-methods", nargs="+", help="methods on the CIFAR pairs (default: --methods)"
    )
    p.add_argument(
        "--full-pairs",
        nargs="*",
        default=None,
        help="pairs that get every method even when --cifar-methods is given",
    )
    p.add_argument("--steps", type=int, default=15)
    p.add_argument("--cifar-steps", type=int, default=5, help="steps for the CIFAR pairs")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, help="torch intra-op threads")
    p.add_argument(
        "--options",
        nargs="*",
        default=["digits", "resnet56-resnet20"],
        help="pairs on which the speed options are measured",
    )
    p.add_argument("--option-methods", nargs="+", default=["kd", "at"])
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "RESULTS.md"))
    p.add_argument("--json", help="also write the raw numbers here")
    p.add_argument(
        "--render",
        nargs="+",
        metavar="JSON",
        help="only re-render: RESULTS JSON [BEFORE JSON [note]] (a before/after table)",
    )
    p.add_argument(
        "--clock",
        choices=["thread", "wall"],
        help="thread: CPU time of the training thread (default with --threads 1); wall",
    )
    p.add_argument(
        "--vs-repdistiller",
        metavar="PATH",
        help="a RepDistiller checkout: measure KD side by side with its train_distill",
    )
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds (side by side)")
    p.add_argument("--vs-steps", type=int, default=8, help="timed steps per round and runner")
    args = p.parse_args(argv)
    if args.vs_repdistiller:
        return side_by_side(args, argv)
    if args.render:
        results = json.loads(Path(args.render[0]).read_text())
        if len(args.render) > 1:
            results["before"] = json.loads(Path(args.render[1]).read_text())
            results["before"]["note"] = " ".join(args.render[2:])
        Path(args.out).write_text(render(results))
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    global CLOCK
    clock = args.clock or ("thread" if torch.get_num_threads() == 1 else "wall")
    CLOCK = time.thread_time if clock == "thread" else time.perf_counter
    methods = args.methods or sorted(m for m in METHODS.names() if m != "ce")
    pairs, skipped = [], []
    for pair in args.pairs:
        t, s, _, _ = PAIRS[pair]
        (pairs if t in MODELS and s in MODELS else skipped).append(pair)
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    results: dict[str, Any] = {
        "machine": machine(),
        "command": "python benchmarks/perf.py " + " ".join(argv or sys.argv[1:]),
        "steps": args.steps,
        "cifar_steps": args.cifar_steps,
        "clock": clock,
        "warmup": args.warmup,
        "pairs": pairs,
        "skipped": skipped,
        "rows": [],
        "options": [],
        "option_methods": [m for m in args.option_methods if m in METHODS],
    }
    for pair in pairs:
        steps = args.steps if pair == "digits" else args.cifar_steps
        chosen = methods
        if pair != "digits" and args.cifar_methods and pair not in (args.full_pairs or []):
            chosen = [m for m in args.cifar_methods if m in METHODS]
        results["rows"] += measure_pair(pair, chosen, steps, args.warmup, log)
    for pair in args.options:
        if pair in pairs:
            steps = args.steps if pair == "digits" else args.cifar_steps
            results["options"] += measure_options(
                pair, results["option_methods"], steps, args.warmup, log
            )
    Path(args.out).write_text(render(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))
    print(render(results))
    return 0


def replace_section(path: Path, text: str) -> None:
    """Put ``text`` (starting with a ``## `` heading) in place of that section of the
    file, or at its end: other sections are kept."""
    heading = text.splitlines()[0]
    old = path.read_text() if path.is_file() else ""
    if heading not in old:
        path.write_text(old.rstrip("\n") + "\n\n" + text)
        return
    before, rest = old.split(heading, 1)
    after = rest.split("\n## ", 1)
    tail = "\n## " + after[1] if len(after) > 1 else ""
    path.write_text(before + text.rstrip("\n") + "\n" + tail)


def side_by_side(args: argparse.Namespace, argv: list[str] | None) -> int:
    import subprocess  # noqa: PLC0415

    import sidebyside  # noqa: PLC0415 - benchmarks/sidebyside.py, beside this script

    if args.threads:
        torch.set_num_threads(args.threads)
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    info = machine()
    rows = sidebyside.measure(
        args.vs_repdistiller, list(sidebyside.PAIRS), args.vs_steps, args.rounds, log
    )
    commit = subprocess.run(
        ["git", "-C", args.vs_repdistiller, "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    command = "python benchmarks/perf.py " + " ".join(argv or sys.argv[1:])
    text = sidebyside.render(rows, info, command, commit or "unknown commit")
    replace_section(Path(args.out), text)
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": info, "rows": rows}, indent=2))
    print(text)
    return 0


_BENCH_DIGITS = load_protocol("digits-ci")
_CIFAR = load_protocol("cifar100")

if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception:
        traceback.print_exc()
        sys.exit(1)
