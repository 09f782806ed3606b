"""Typed recipes: YAML in, validated objects out, with errors that name the key.

A recipe is user input. It is read with ``yaml.safe_load``, checked for unknown keys
(with a did-you-mean), then validated by pydantic for types and ranges. Names inside
it (models, datasets, methods, views) resolve through kdlab's registries only.
"""

from __future__ import annotations

import copy
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
)

from kdlab.errors import ConfigError, did_you_mean

M = TypeVar("M", bound=BaseModel)


class Strict(BaseModel):
    """Base of every config section: unknown keys are errors."""

    # allow_inf_nan=False: a NaN or infinite lr, weight or temperature is never meant.
    model_config = ConfigDict(
        extra="forbid", validate_assignment=True, protected_namespaces=(), allow_inf_nan=False
    )


class AugmentConfig(Strict):
    crop_padding: int = Field(0, ge=0, description="random crop with this zero padding")
    hflip: bool = Field(False, description="random horizontal flip")


class DataConfig(Strict):
    name: str = "digits"
    root: str | None = Field(None, description="local folder or file for datasets read from disk")
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0, description="held out of train for selection")
    test_fraction: float = Field(
        0.2, gt=0.0, lt=1.0, description="only for datasets without a test split"
    )
    split_seed: int = Field(
        0, ge=0, lt=2**32, description="seed of the train/val/test split (fixed across run seeds)"
    )
    batch_size: int = Field(64, ge=1)
    eval_batch_size: int = Field(512, ge=1)
    normalize: bool = True
    augment: AugmentConfig = AugmentConfig()
    per_class: int | None = Field(
        None, ge=1, description="keep this many training samples per class"
    )
    options: dict[str, Any] = Field(default_factory=dict, description="dataset-specific options")


class ModelConfig(Strict):
    name: str
    kwargs: dict[str, Any] = Field(default_factory=dict)
    checkpoint: str | None = Field(None, description="a .safetensors file or a run folder")
    output: StrictInt | StrictStr | None = Field(
        None,
        description="which part of the model's output is the logits when it returns a tuple "
        "or dict: an index, a key, or 'logits' (default: the only tensor, or .logits)",
    )


class OptimizerConfig(Strict):
    name: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(0.05, gt=0.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    weight_decay: float = Field(5e-4, ge=0.0)
    nesterov: bool = False
    betas: tuple[float, float] = (0.9, 0.999)


class ScheduleConfig(Strict):
    name: Literal["constant", "step", "multistep", "cosine"] = "multistep"
    milestones: list[int] = Field(default_factory=list, description="epochs (multistep)")
    step_size: int = Field(30, ge=1, description="epochs (step)")
    gamma: float = Field(0.1, gt=0.0)
    min_lr: float = Field(0.0, ge=0.0, description="cosine floor")
    warmup_epochs: int = Field(0, ge=0)


class TrainConfig(Strict):
    epochs: int = Field(30, ge=1)
    optimizer: OptimizerConfig = OptimizerConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    grad_clip: float | None = Field(None, gt=0.0, description="max global grad norm")
    amp: Literal["off", "bf16", "fp16"] = "off"
    channels_last: bool = False
    compile: bool = False
    cache_teacher: bool = Field(
        False,
        description="reuse the teacher's outputs per sample; exact only without augmentation",
    )
    device: str = Field("auto", description="auto, cpu, cuda, cuda:1, ...")
    threads: int | None = Field(None, ge=1, description="torch intra-op threads")
    checkpoint_every: int | None = Field(
        None, ge=1, description="also checkpoint every N iterations (always at epoch end)"
    )
    pre_stage_epochs: int | None = Field(
        None, ge=0, description="override every pre-stage's epochs (0 drops them; quick checks)"
    )
    progress: bool = True


class DistillConfig(Strict):
    terms: list[dict[str, Any]] = Field(default_factory=lambda: [{"method": "ce"}])
    views: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="named input views: {name: {type: ..., **params}}"
    )
    stages: list[dict[str, Any]] | None = Field(
        None, description="None: the methods' own pre-stages; []: none; a list: these"
    )


class RunConfig(Strict):
    name: str = "run"
    seed: int = Field(0, ge=0, lt=2**32, description="torch and numpy take 0 <= seed < 2**32")
    output_dir: str = "runs"
    plugins: list[str] = Field(
        default_factory=list,
        description="local .py files run before names resolve: they run code (docs/security.md)",
    )
    data: DataConfig = DataConfig()
    student: ModelConfig
    teacher: ModelConfig | None = None
    distill: DistillConfig = DistillConfig()
    train: TrainConfig = TrainConfig()

    @field_validator("plugins")
    @classmethod
    def _load_plugins(cls, paths: list[str]) -> list[str]:
        # Loaded while the recipe is validated, so every process that reads it (spawned
        # DDP workers, eval, export) has the plugin's names; kept as absolute paths.
        from kdlab.plugins import load_plugins  # noqa: PLC0415

        return load_plugins(paths)


# ---------------------------------------------------------------- validation


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The BaseModel class inside an annotation like ``X``, ``X | None``, ``Optional[X]``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if get_origin(annotation) in (Union, types.UnionType):
        for arg in get_args(annotation):
            found = _model_in(arg)
            if found is not None:
                return found
    return None


def check_unknown_keys(model: type[BaseModel], data: Any, where: str = "") -> None:
    """Raise ConfigError for the first key ``data`` has that ``model`` does not."""
    if not isinstance(data, dict):
        return
    fields = model.model_fields
    for key, value in data.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in fields:
            raise ConfigError(f"unknown key {path!r}; {did_you_mean(str(key), fields)}")
        sub = _model_in(fields[key].annotation)
        if sub is not None:
            check_unknown_keys(sub, value, path)


def _format_validation_error(err: ValidationError, where: str) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        key = f"{where}.{loc}" if where and loc else (where or loc)
        got = e.get("input")
        shown = repr(got) if not isinstance(got, dict) else "a mapping"
        lines.append(f"key {key!r}: {e['msg']} (got {shown})")
    return "; ".join(lines)


def validate(model: type[M], data: Any, where: str = "") -> M:
    """Validate ``data`` into ``model`` or raise ConfigError naming the key."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'} must be a mapping, got {type(data).__name__}")
    check_unknown_keys(model, data, where)
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, where)) from None


# ---------------------------------------------------------------- loading


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping with the safe loader; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:  # also refuses tags such as !!python/object
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {err}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"config file {str(path)!r} cannot be read as text: {err}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping at the top level")
    return data


def apply_overrides(data: dict[str, Any], overrides: typing.Iterable[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides (values parsed as YAML; list items by index)."""
    data = copy.deepcopy(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key.path=value")
        dotted, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        keys = dotted.strip().split(".")
        node: Any = data
        for i, key in enumerate(keys[:-1]):
            if isinstance(node, list):
                node = node[_list_index(node, key, keys[: i + 1])]
            elif isinstance(node, dict):
                node = node.setdefault(key, {})
                if node is None:
                    raise ConfigError(f"override {dotted!r}: {'.'.join(keys[: i + 1])!r} is empty")
            else:  # e.g. train.epochs.x=1: a scalar has no keys
                raise ConfigError(
                    f"override {dotted!r}: {'.'.join(keys[:i])!r} is a {type(node).__name__}, "
                    "not a mapping or list"
                )
        last = keys[-1]
        if isinstance(node, list):
            node[_list_index(node, last, keys)] = value
        elif isinstance(node, dict):
            node[last] = value
        else:
            raise ConfigError(f"override {dotted!r}: {'.'.join(keys[:-1])!r} is not a mapping")
    return data


def _list_index(node: list[Any], key: str, path: list[str]) -> int:
    try:
        idx = int(key)
        node[idx]
        return idx
    except (ValueError, IndexError):
        raise ConfigError(
            f"override {'.'.join(path)!r}: {key!r} is not an index of a list of {len(node)}"
        ) from None


def load_config(
    source: str | Path | dict[str, Any], overrides: typing.Iterable[str] = ()
) -> RunConfig:
    """Load a recipe from a YAML file or a dict, apply overrides, validate."""
    data = read_yaml(source) if isinstance(source, (str, Path)) else copy.deepcopy(source)
    data = apply_overrides(data, overrides)
    return validate(RunConfig, data)


def dump_config(cfg: BaseModel) -> str:
    """The resolved config as YAML (what a run folder keeps)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
