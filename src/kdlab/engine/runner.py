"""Training runs on PyTorch Ignite: stages, selection on validation, resumable checkpoints.

``train(cfg)`` builds data, models and the Distiller from a recipe, runs each stage
(the methods' pre-stages, then the main stage) as an Ignite ``Engine``, selects the
best epoch on the validation split, and reports test accuracy for the best and the
last epoch. The run folder keeps the resolved config, the environment, per-epoch
metrics, checkpoints and the final weights, so any number can be traced back.
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events
from torch import Tensor, nn
from tqdm.auto import tqdm

from kdlab.config import RunConfig, dump_config
from kdlab.data import DataBundle, build_dataset, make_loader
from kdlab.data.augment import augment
from kdlab.data.base import check_bundle
from kdlab.distiller import Distiller
from kdlab.engine import checkpoint as ckpt
from kdlab.engine import distributed as dist
from kdlab.engine.env import environment, resolve_device
from kdlab.engine.evaluate import evaluate
from kdlab.engine.optim import build_optimizer, build_scheduler
from kdlab.engine.stages import Stage, resolve_stages, trainable_parameters
from kdlab.errors import CheckpointError, ConfigError, NumericalError
from kdlab.methods import build_terms
from kdlab.models import count_parameters, create_model
from kdlab.views import build_views

WEIGHTS = "model.safetensors"  # the selected student weights of a finished run


@dataclass
class RunResult:
    """What a finished run reports (also written to ``results.json``)."""

    run_dir: str
    selection: str  # "best-val" or "last" (no validation split)
    best_epoch: int
    val_acc: float | None
    test_acc_best: float
    test_acc_last: float
    test_acc5_best: float
    test_acc5_last: float
    params: int
    wall_time_s: float
    history: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("history")
        return d


def load_model(
    name: str, kwargs: dict[str, Any], checkpoint: str | None, num_classes: int, in_channels: int
) -> nn.Module:
    """A model from the registry, with weights from a run folder or safetensors file."""
    model = create_model(name, num_classes, in_channels, **kwargs)
    if checkpoint is None:
        return model
    path = Path(checkpoint)
    if path.is_dir():
        path = path / WEIGHTS
    state = ckpt.load_weights(path)
    missing, unexpected = _compare_keys(model.state_dict(), state)
    if missing or unexpected:
        raise CheckpointError(
            f"weights {str(path)!r} do not fit model {name!r}: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]} (is it the same architecture and class count?)"
        )
    try:
        model.load_state_dict(state)
    except RuntimeError as err:  # same names, other shapes: e.g. another class count
        detail = "; ".join(line.strip() for line in str(err).splitlines()[1:]) or str(err)
        raise CheckpointError(
            f"weights {str(path)!r} do not fit model {name!r} with {num_classes} classes and "
            f"{in_channels} input channels: {detail}"
        ) from None
    return model


def _compare_keys(expected: dict[str, Tensor], got: dict[str, Tensor]) -> tuple[list, list]:
    return sorted(set(expected) - set(got)), sorted(set(got) - set(expected))


def run_folder(cfg: RunConfig) -> Path:
    return Path(cfg.output_dir) / cfg.name


def _seed_for(seed: int, stage_index: int, iteration: int, rank: int = 0) -> int:
    # Every step's randomness (augmentation, views, dropout) is a function of the
    # run seed and the step alone, so a resumed run replays it exactly. Each rank of a
    # distributed run draws its own (its shard must not get the same crops as rank 0's).
    return (seed * 1_000_003 + stage_index * 10_000_019 + iteration + rank * 1_000_000_007) % (
        2**63 - 1
    )


def _seed_step(seed: int, device: torch.device) -> None:
    # The generators a step can draw from: the CPU one (augmentation, views on CPU) and
    # the training device's. Same streams as torch.manual_seed, which also seeds every
    # lazily-initialised backend (cuda, xpu, mtia...) through Python and costs a few ms.
    torch.default_generator.manual_seed(seed)
    if device.type == "cuda":
        torch.cuda.manual_seed(seed)


def _enable_teacher_cache(cfg: RunConfig, distiller: Distiller, num_samples: int) -> None:
    aug = cfg.data.augment
    if aug.crop_padding or aug.hflip:
        raise ConfigError(
            "train.cache_teacher reuses the teacher's outputs for each sample, which is exact "
            "only when the teacher sees the same input every epoch; data.augment "
            f"(crop_padding={aug.crop_padding}, hflip={aug.hflip}) changes it: turn one off"
        )
    views = sorted(
        {t.params.teacher_view for t in distiller.terms.values() if t.needs_teacher}
        - {"default"}
    )
    if views:
        warnings.warn(
            f"train.cache_teacher: teacher view(s) {views} change the input each step and "
            "are computed every step; only the default view is cached",
            stacklevel=3,
        )
    distiller.enable_teacher_cache(num_samples)


class Trainer:
    """Builds everything a recipe names and runs its stages."""

    def __init__(
        self,
        cfg: RunConfig,
        run_dir: Path | None = None,
        progress: Callable[[str, int, int], None] | None = None,
        bundle: DataBundle | None = None,
        on_epoch: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.cfg = cfg
        self.on_epoch = on_epoch  # called with each epoch's metrics row (on rank 0)
        self.rank, self.world_size = dist.rank(), dist.world_size()
        self.run_dir = Path(run_dir) if run_dir is not None else run_folder(cfg)
        self.progress_cb = progress
        tcfg = cfg.train
        if tcfg.threads:
            torch.set_num_threads(tcfg.threads)
        self.device = dist.local_device(resolve_device(tcfg.device))
        if tcfg.amp == "fp16" and self.device.type != "cuda":
            raise ConfigError(
                "train.amp 'fp16' needs a CUDA device (it trains with a gradient scaler); "
                "use 'bf16' on CPU"
            )
        torch.manual_seed(cfg.seed)
        self.data = bundle if bundle is not None else build_dataset(cfg.data)
        d = self.data
        # Labels out of range or NaN inputs would otherwise surface as an IndexError
        # deep inside a loss (or as a NaN loss) many steps later: check them up front.
        check_bundle(d, cfg.data.name)
        student = load_model(
            cfg.student.name,
            cfg.student.kwargs,
            cfg.student.checkpoint,
            d.num_classes,
            d.in_channels,
        )
        teacher = None
        if cfg.teacher is not None:
            teacher = load_model(
                cfg.teacher.name,
                cfg.teacher.kwargs,
                cfg.teacher.checkpoint,
                d.num_classes,
                d.in_channels,
            )
        terms = build_terms(cfg.distill.terms)
        for term in terms:
            bind = getattr(term, "bind_data", None)
            if callable(bind):  # terms that index the training set (CRD's memory bank)
                bind(len(d.train), labels=d.train.y)
        self.distiller = Distiller(
            student, teacher, terms, build_views(cfg.distill.views), example_input=d.train.x[:2]
        ).to(self.device)
        if tcfg.channels_last and d.train.x.dim() == 4:
            self.distiller.to(memory_format=torch.channels_last)
        if tcfg.cache_teacher and teacher is not None:
            _enable_teacher_cache(cfg, self.distiller, len(d.train))
        if tcfg.compile:
            # In place (Module.compile): parameter names and checkpoints are unchanged. A
            # compiled model's submodule hooks capture nothing (measured, torch 2.13), so a
            # model with taps stays eager.
            tapped = self.distiller.teacher_taps
            for role, model, taps in (
                ("student", student, self.distiller.student_taps.taps),
                ("teacher", teacher, tapped.taps if tapped is not None else []),
            ):
                if model is None:
                    continue
                if taps:
                    warnings.warn(
                        f"train.compile: the {role} has taps ({', '.join(map(str, taps))}), "
                        "which compiled models do not fill; it runs eagerly",
                        stacklevel=2,
                    )
                else:
                    model.compile()
        self.stages = resolve_stages(cfg, self.distiller)
        self.train_loader = make_loader(
            d.train,
            dist.per_rank_batch(cfg.data.batch_size),
            train=True,
            seed=cfg.seed,
            rank=self.rank,
            world_size=self.world_size,
            device=self.device,
        )
        self.history: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ running
    def run(self, resume: bool = False) -> RunResult:
        start = time.time()
        main = self.rank == 0  # only rank 0 writes the run folder
        if main:
            try:
                self.run_dir.mkdir(parents=True, exist_ok=True)
            except OSError as err:  # a file in the way, no permission: the user's path
                raise ConfigError(
                    f"run folder {str(self.run_dir)!r} cannot be created: {err}"
                ) from None
            ckpt.atomic_write_text(self.run_dir / "config.yaml", dump_config(self.cfg))
            env = {**environment(self.device), "world_size": self.world_size}
            ckpt.atomic_write_text(self.run_dir / "env.json", json.dumps(env, indent=2))
        state = self._resume_state() if resume else None
        self._started = start - (state or {}).get("elapsed", 0.0)
        metrics = self.run_dir / "metrics.jsonl"
        if state is None:
            # A fresh start (also --resume with no checkpoint yet: a run killed before
            # its first one) must not keep what an earlier attempt left behind.
            if main:
                clear_run_artifacts(self.run_dir)
        else:
            # Rows of epochs after the checkpoint were written by the killed run and
            # will be written again by the replay: keep only those the checkpoint
            # covers (this also drops a last line cut by the kill), so each
            # (stage, epoch) appears exactly once.
            self.history = self._rows_before(state, _read_jsonl(metrics))
            if main:
                rows = "".join(json.dumps(r) + "\n" for r in self.history)
                ckpt.atomic_write_text(metrics, rows)
        first = state["stage_index"] if state else 0
        for i, stage in enumerate(self.stages):
            if i < first:
                continue
            fresh = state is None or i != first or state.get("fresh_stage", False)
            self._run_stage(i, stage, None if fresh else state)
        result = self._finish(time.time() - self._started)
        return result

    def _rows_before(self, state: dict[str, Any], rows: list[dict[str, Any]]) -> list[dict]:
        """The metrics rows of epochs a checkpoint state has completed."""
        index = {s.name: i for i, s in enumerate(self.stages)}
        done = int(state["iteration"]) // max(len(self.train_loader), 1)
        at = int(state["stage_index"])
        kept = []
        for row in rows:
            i = index.get(row.get("stage"), len(self.stages))  # type: ignore[arg-type]
            epoch = row.get("epoch")
            if not isinstance(epoch, int):
                continue
            if i < at or (i == at and epoch <= done):
                kept.append(row)
        return kept

    def _resume_state(self) -> dict[str, Any] | None:
        loaded = ckpt.load_latest_checkpoint(self.run_dir / "checkpoints")
        if loaded is None:
            return None
        weights, state = loaded
        missing, unexpected = _compare_keys(self.distiller.state_dict(), weights)
        if missing or unexpected:
            raise CheckpointError(
                f"checkpoint in {str(self.run_dir)!r} does not fit this recipe: missing "
                f"{missing[:5]}, unexpected {unexpected[:5]}"
            )
        required = {"stage_index": int, "iteration": int, "optimizer": dict, "scheduler": dict}
        for key, kind in required.items():
            if not isinstance(state, dict) or not isinstance(state.get(key), kind):
                raise CheckpointError(
                    f"checkpoint in {str(self.run_dir)!r}: state.pt lacks {key!r} "
                    "(not a kdlab checkpoint?)"
                )
        if not 0 <= state["stage_index"] < len(self.stages):
            raise CheckpointError(
                f"checkpoint in {str(self.run_dir)!r} is at stage {state['stage_index']} but "
                f"this recipe has {len(self.stages)} stages; was the recipe changed?"
            )
        try:
            self.distiller.load_state_dict(weights)
        except RuntimeError as err:  # same keys, other shapes: a changed recipe
            raise CheckpointError(
                f"checkpoint in {str(self.run_dir)!r} does not fit this recipe: {err}"
            ) from None
        state["elapsed"] = float(state.get("elapsed", 0.0))
        return state

    def _run_stage(self, index: int, stage: Stage, resume: dict[str, Any] | None) -> None:
        cfg = self.cfg
        params = trainable_parameters(self.distiller, stage)
        optimizer = build_optimizer(params, stage.optimizer)
        scheduler = build_scheduler(optimizer, stage.schedule, stage.epochs)
        best = {"val_acc": -1.0, "epoch": 0}
        if resume is not None:
            try:
                optimizer.load_state_dict(resume["optimizer"])
                scheduler.load_state_dict(resume["scheduler"])
            except (ValueError, KeyError, RuntimeError) as err:
                raise CheckpointError(
                    f"checkpoint in {str(self.run_dir)!r}: optimizer state does not fit stage "
                    f"{stage.name!r} of this recipe ({err}); was the recipe changed?"
                ) from None
            best = dict(resume.get("best", best))
        loader = self.train_loader
        distiller = self.distiller
        aug = cfg.data.augment
        device = self.device
        amp = cfg.train.amp
        autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
        scaler = torch.amp.GradScaler("cuda") if amp == "fp16" and device.type == "cuda" else None
        grad_clip = cfg.train.grad_clip
        channels_last = cfg.train.channels_last
        plan_losses = stage.losses
        main = self.rank == 0
        # DDP syncs the parameters this stage trains; pre-stages (and terms idle in the
        # main stage) leave some without a gradient, which DDP must be told to expect.
        idle = any(not t.in_main_stage for t in distiller.terms.values())
        ddp = [dist.wrap(distiller, device, find_unused=not stage.is_main or idle)]

        def step(engine: Engine, batch: tuple[Tensor, Tensor, Tensor]) -> dict[str, Tensor]:
            x, y, idx = batch
            it = engine.state.iteration
            _seed_step(_seed_for(cfg.seed, index, it, self.rank), device)
            if not (distiller.training and distiller.student.training):  # walking all modules
                distiller.train()  # every step costs more than a small forward
            x = augment(x, aug.crop_padding, aug.hflip)
            if channels_last and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            with (
                torch.autocast(device.type, dtype=autocast_dtype)
                if autocast_dtype is not None
                else contextlib.nullcontext()  # a disabled autocast still costs per step
            ):
                out = ddp[0](
                    x,
                    y,
                    idx,
                    losses=plan_losses,
                    epoch=engine.state.epoch - 1,
                    iteration=it,
                    progress=(it - 1) / max(stage.epochs * len(loader), 1),
                )
            if not bool(torch.isfinite(out.total)):
                bad = [k for k, v in out.losses.items() if not bool(torch.isfinite(v))]
                raise NumericalError(
                    f"stage {stage.name!r}, epoch {engine.state.epoch}, iteration {it}: "
                    f"loss {', '.join(repr(b) for b in bad) or 'total'} is not finite; "
                    "the last good checkpoint is kept (lower the learning rate or set "
                    "train.grad_clip)"
                )
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(out.total).backward()
                scaler.unscale_(optimizer)
            else:
                out.total.backward()
            if grad_clip is not None:
                norm = torch.nn.utils.clip_grad_norm_(params, grad_clip)
                # Clipping a NaN norm gives NaN gradients: stop before they reach the
                # weights (fp16's scaler skips such steps itself, so not with it).
                if scaler is None and not bool(torch.isfinite(norm)):
                    raise NumericalError(
                        f"stage {stage.name!r}, epoch {engine.state.epoch}, iteration {it}: "
                        f"the gradient norm is {float(norm)} (loss terms "
                        f"{', '.join(repr(k) for k in out.losses)}); the last good "
                        "checkpoint is kept"
                    )
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            logs = {k: v.detach() for k, v in out.losses.items()}
            logs["loss"] = out.total.detach()
            logs["correct"] = (out.logits.detach().argmax(1) == y).sum()
            logs["n"] = torch.tensor(y.shape[0])
            return logs

        engine = Engine(step)
        sums: dict[str, Tensor] = {}
        # A mid-epoch checkpoint carries the running sums of the epoch's train metrics,
        # so the resumed epoch's row equals an uninterrupted run's (not a partial mean).
        pending_sums = {k: v.to(device) for k, v in ((resume or {}).get("sums") or {}).items()}
        total_iters = stage.epochs * len(loader)
        bar = None
        if cfg.train.progress and self.progress_cb is None and main:
            bar = tqdm(
                total=total_iters,
                initial=resume["iteration"] if resume else 0,
                desc=f"{cfg.name}:{stage.name}",
                leave=False,
                dynamic_ncols=True,
            )
        every = cfg.train.checkpoint_every

        @engine.on(Events.EPOCH_STARTED)
        def _epoch_start(e: Engine) -> None:
            loader.set_epoch(e.state.epoch - 1 + 1000 * index)
            sums.clear()
            sums.update(pending_sums)
            pending_sums.clear()

        @engine.on(Events.ITERATION_COMPLETED)
        def _accumulate(e: Engine) -> None:
            for k, v in e.state.output.items():
                sums[k] = sums[k] + v if k in sums else v.clone()
            if self.progress_cb is not None and main:
                self.progress_cb(stage.name, e.state.iteration, total_iters)
            elif bar is not None:
                bar.update(1)
            if every and e.state.iteration % every == 0 and e.state.iteration % len(loader):
                self._checkpoint(index, e, optimizer, scheduler, best, sums, scaler)

        @engine.on(Events.EPOCH_COMPLETED)
        def _epoch_end(e: Engine) -> None:
            scheduler.step()
            epoch = e.state.epoch
            n_batches = max(len(loader), 1) * self.world_size
            sums.update(dist.reduce_sums(sums))
            row: dict[str, Any] = {"stage": stage.name, "epoch": epoch}
            row["lr"] = optimizer.param_groups[0]["lr"]
            for k, v in sums.items():
                if k not in ("correct", "n"):
                    row[f"train_{k}"] = float(v) / n_batches
            row["train_acc"] = 100.0 * float(sums["correct"]) / max(float(sums["n"]), 1.0)
            if self.data.val is not None:
                val = dist.evaluate_sharded(
                    distiller.student, self.data.val, cfg.data.eval_batch_size, device
                )
                row.update({f"val_{k}": v for k, v in val.items()})
                if stage.is_main and val["acc1"] > best["val_acc"]:
                    best.update(val_acc=val["acc1"], epoch=epoch)
                    if main:
                        ckpt.save_weights(
                            self.run_dir / "best.safetensors", distiller.student.state_dict()
                        )
            row["time"] = time.time()
            self.history.append(row)
            if main:
                _append_jsonl(self.run_dir / "metrics.jsonl", row)
            self._checkpoint(index, e, optimizer, scheduler, best, None, scaler)
            if self.on_epoch is not None and main:
                self.on_epoch(row)
            if bar is not None:
                shown = {"loss": row.get("train_loss"), "val": row.get("val_acc1")}
                bar.set_postfix({k: round(v, 3) for k, v in shown.items() if v is not None})

        if resume is not None:
            engine.load_state_dict(
                {
                    "iteration": resume["iteration"],
                    "epoch_length": len(loader),
                    "max_epochs": stage.epochs,
                }
            )
            loader.start_batch = resume["iteration"] % len(loader)
            if scaler is not None and resume.get("scaler"):
                scaler.load_state_dict(resume["scaler"])
        try:
            if resume is None or resume["iteration"] < total_iters:
                engine.run(loader, max_epochs=stage.epochs, epoch_length=len(loader))
        finally:
            if bar is not None:
                bar.close()
            ddp.clear()  # free DDP (and its gradient hooks) before the next stage wraps anew
        self._stage_best = best

    def _checkpoint(
        self,
        index: int,
        e: Engine,
        optimizer: Any,
        scheduler: Any,
        best: dict[str, Any],
        sums: dict[str, Tensor] | None = None,
        scaler: Any = None,
    ) -> None:
        weights = self.distiller.state_dict()
        # A finite loss can still leave non-finite weights (an overflowing gradient);
        # saving them would replace the last good checkpoint with a useless one. Every
        # rank checks (their weights are equal), so all stop together.
        for name, value in weights.items():
            if value.is_floating_point() and not bool(torch.isfinite(value).all()):
                raise NumericalError(
                    f"stage {self.stages[index].name!r}, epoch {e.state.epoch}, iteration "
                    f"{e.state.iteration}: weight {name!r} is not finite; not checkpointed, "
                    "the last good checkpoint is kept (lower the learning rate or set "
                    "train.grad_clip)"
                )
        if self.rank != 0:
            return
        state = {
            "stage_index": index,
            "stage": self.stages[index].name,
            "iteration": e.state.iteration,
            "epoch": e.state.epoch,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "best": best,
            "sums": {k: v.detach().cpu() for k, v in (sums or {}).items()},
            "elapsed": time.time() - getattr(self, "_started", time.time()),
        }
        if scaler is not None:
            state["scaler"] = scaler.state_dict()
        step = index * 10_000_000 + e.state.iteration
        ckpt.save_checkpoint(self.run_dir / "checkpoints", step, weights, state)
        # The next stage starts from this one's final weights: mark it done. Only when
        # the stage's last iteration is done: a mid-epoch checkpoint of the last epoch
        # also has epoch == epochs, and marking the stage done there made a resume skip
        # the rest of it (found by tests/test_crash.py).
        done = e.state.iteration >= self.stages[index].epochs * len(self.train_loader)
        if done and index + 1 < len(self.stages):
            nxt = {**state, "stage_index": index + 1, "stage": self.stages[index + 1].name}
            nxt.update(iteration=0, epoch=0, fresh_stage=True, sums={})
            ckpt.save_checkpoint(self.run_dir / "checkpoints", step + 1, weights, nxt)

    def _finish(self, elapsed: float) -> RunResult:
        if self.rank != 0:  # rank 0 tests and writes; the others return its result
            shared = dist.broadcast_json(None)
            return RunResult(**shared)
        cfg, d, device = self.cfg, self.data, self.device
        student = self.distiller.student
        last_weights = {k: v.detach().clone() for k, v in student.state_dict().items()}
        last = evaluate(student, d.test, cfg.data.eval_batch_size, device)
        best_path = self.run_dir / "best.safetensors"
        main_best = getattr(self, "_stage_best", {"val_acc": -1.0, "epoch": 0})
        if d.val is not None and best_path.is_file():
            student.load_state_dict(ckpt.load_weights(best_path))
            best = evaluate(student, d.test, cfg.data.eval_batch_size, device)
            selection = "best-val"
        else:
            best, selection = last, "last"
            main_best = {"val_acc": None, "epoch": cfg.train.epochs}
        ckpt.save_weights(self.run_dir / WEIGHTS, student.state_dict())
        student.load_state_dict(last_weights)
        ckpt.save_weights(self.run_dir / "last.safetensors", last_weights)
        result = RunResult(
            run_dir=str(self.run_dir),
            selection=selection,
            best_epoch=int(main_best["epoch"]),
            val_acc=main_best["val_acc"],
            test_acc_best=best["acc1"],
            test_acc_last=last["acc1"],
            test_acc5_best=best["acc5"],
            test_acc5_last=last["acc5"],
            params=count_parameters(student),
            wall_time_s=elapsed,
            history=self.history,
        )
        ckpt.atomic_write_text(
            self.run_dir / "results.json", json.dumps(result.to_json(), indent=2)
        )
        dist.broadcast_json(asdict(result))
        return result


RUN_ARTIFACTS = (
    "checkpoints",
    "metrics.jsonl",
    "best.safetensors",
    "last.safetensors",
    WEIGHTS,
    "results.json",
)


def clear_run_artifacts(run_dir: Path) -> None:
    """Remove what an earlier run left in ``run_dir``, so a fresh run never mixes in
    its checkpoints or best weights."""
    for name in RUN_ARTIFACTS:
        path = run_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def _append_jsonl(path: Path, row: dict[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue  # a line cut by a kill
    return rows


def train(
    cfg: RunConfig,
    run_dir: str | Path | None = None,
    resume: bool = False,
    progress: Callable[[str, int, int], None] | None = None,
    bundle: DataBundle | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> RunResult:
    """Train the recipe ``cfg`` in ``run_dir`` (default ``output_dir/name``).

    Args:
        resume: continue from the newest good checkpoint in the run folder.
        progress: called as ``progress(stage, iteration, total)`` after every step
            (replaces the per-epoch printout).
        bundle: an already built dataset (skips ``build_dataset``; e.g. for pipelines).
        on_epoch: called with each epoch's metrics row (``stage``, ``epoch``,
            ``val_acc1``, ...) after it is logged; e.g. to report to a tuner's pruner.
    """
    trainer = Trainer(cfg, Path(run_dir) if run_dir else None, progress, bundle, on_epoch)
    return trainer.run(resume=resume)


def is_finite_number(x: float | None) -> bool:
    return x is not None and math.isfinite(x)
