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
    SerializeAsAny,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
    model_validator,
)

from kdlab.errors import ConfigError, KdlabError, did_you_mean
from kdlab.recipes import find

M = TypeVar("M", bound=BaseModel)

DEFAULT_VIEW = "default"  # the batch as the data pipeline gave it
MAIN_STAGE = "main"


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


class EvaluatorParams(Strict):
    """Keys every evaluator accepts; each evaluator subclasses this with its own."""

    name: str = "accuracy"


def evaluator_params(spec: Any, where: str = "train.evaluator") -> EvaluatorParams:
    """``train.evaluator`` (a name or ``{name: ..., **params}``) validated into the
    registered evaluator's ``Params``."""
    from kdlab.engine.evaluators import EVALUATORS  # noqa: PLC0415 - imports this module

    if isinstance(spec, str):
        spec = {"name": spec}
    if isinstance(spec, EvaluatorParams):
        cls = EVALUATORS.get(spec.name).Params
        return spec if isinstance(spec, cls) else validate(cls, spec.model_dump(), where)
    if not isinstance(spec, typing.Mapping):
        raise ConfigError(f"{where} must be a name or a mapping with a 'name' key, got {spec!r}")
    spec = {"name": EvaluatorParams().name, **spec}
    cls = EVALUATORS.get(str(spec["name"])).Params
    return validate(cls, spec, where=f"{where} ({spec['name']})")


class SelectConfig(Strict):
    """The validation metric that picks the best epoch (``train.select: recall@1`` for
    short); by default the evaluator's own metric, in its direction."""

    metric: str | None = Field(None, description="a metric of train.evaluator (default: its own)")
    mode: Literal["max", "min"] | None = Field(None, description="default: the metric's direction")

    @model_validator(mode="before")
    @classmethod
    def _short(cls, value: Any) -> Any:
        return {"metric": value} if isinstance(value, str) else value


class TrainConfig(Strict):
    epochs: int = Field(30, ge=1)
    optimizer: OptimizerConfig = OptimizerConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    grad_clip: float | None = Field(None, gt=0.0, description="max global grad norm")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto",
        description="auto: bf16 autocast where the hardware has native bf16 (CPUs with "
        "AVX512-BF16 or AMX, CUDA capability >= 8.0), else fp32; fp16 needs CUDA",
    )
    channels_last: Literal["auto"] | bool = Field(
        "auto", description="auto: channels_last memory format for conv nets on 4-D input"
    )
    amp: Literal["off", "bf16", "fp16"] | None = Field(
        None, exclude=True, description="deprecated: train.precision (off = fp32)"
    )
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
    log_every: int = Field(
        50, ge=1, description="check losses for NaN/inf every N iterations (and at checkpoints)"
    )
    pre_stage_epochs: int | None = Field(
        None, ge=0, description="override every pre-stage's epochs (0 drops them; quick checks)"
    )
    evaluator: SerializeAsAny[EvaluatorParams] = Field(
        default_factory=lambda: evaluator_params("accuracy"),
        description="what validation and test are scored with: accuracy, retrieval, ...",
    )
    select: SelectConfig = Field(default_factory=SelectConfig)
    progress: bool = True

    @model_validator(mode="before")
    @classmethod
    def _amp_is_precision(cls, data: Any) -> Any:
        if not isinstance(data, dict) or data.get("amp") is None:
            return data
        data = dict(data)
        amp = data.pop("amp")
        wanted = "fp32" if amp in ("off", False) else amp  # YAML reads a bare off as False
        if data.get("precision", wanted) != wanted:
            raise ConfigError(
                f"train.amp {amp!r} and train.precision {data['precision']!r} disagree; "
                "train.amp is the old name of train.precision: give only precision"
            )
        data["precision"] = wanted
        return data

    @field_validator("evaluator", mode="before")
    @classmethod
    def _evaluator(cls, value: Any) -> Any:
        return evaluator_params(value)

    @model_validator(mode="after")
    def _select_is_a_metric(self) -> TrainConfig:
        from kdlab.engine.evaluators import EVALUATORS  # noqa: PLC0415

        names = EVALUATORS.get(self.evaluator.name).metric_names(self.evaluator)
        if self.select.metric is not None and self.select.metric not in names:
            raise ConfigError(
                f"train.select: {self.select.metric!r} is not a metric of evaluator "
                f"{self.evaluator.name!r}; {did_you_mean(self.select.metric, names)}"
            )
        return self


class TermParams(Strict):
    """Keys every term accepts; each method subclasses this with its own.

    Read like the recipe entry it came from: ``params["T"]``, ``params.get("T")``.
    """

    method: str
    name: str | None = Field(None, description="unique name of the term (default: the method)")
    weight: float | None = Field(None, ge=0.0, description="loss weight (default: the method's)")
    student_view: str = DEFAULT_VIEW
    teacher_view: str = DEFAULT_VIEW
    main_stage: bool | None = Field(
        None, description="add the loss to the main stage (default: the method's choice)"
    )

    @property
    def term_name(self) -> str:
        return self.name or self.method

    def __getitem__(self, key: str) -> Any:
        if key not in type(self).model_fields:
            raise KeyError(key)
        return getattr(self, key)

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key) if key in type(self).model_fields else default

    def keys(self) -> list[str]:
        return list(type(self).model_fields)


def term_params(spec: Any, where: str = "term") -> TermParams:
    """A recipe's term entry validated into its method's ``Params`` (names resolve
    through the method registry)."""
    from kdlab.methods import METHODS  # noqa: PLC0415 - methods import this module

    if isinstance(spec, TermParams):
        cls = METHODS.get(spec.method).Params
        return spec if isinstance(spec, cls) else validate(cls, spec.model_dump(), where)
    if not isinstance(spec, typing.Mapping) or "method" not in spec:
        raise ConfigError(f"{where} must be a mapping with a 'method' key, got {spec!r}")
    cls = METHODS.get(str(spec["method"])).Params
    return validate(cls, dict(spec), where=f"{where} ({spec['method']})")


class ViewSpec(BaseModel):
    """A named input view: a registered ``type`` and its parameters."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)
    type: str

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class StageConfig(Strict):
    """A pre-stage: which losses train which modules, for how long, with what optimiser.

    ``losses`` maps a term name, or ``term.mode`` for a term's extra loss
    (``Term.loss_<mode>``), to its weight. ``train`` lists module paths inside the
    Distiller ('student', 'terms.ft.paraphraser', ...) whose parameters are trained;
    parameters that receive no gradient (e.g. student layers after a FitNets guided
    layer) are left untouched by the optimiser. The length is ``epochs``, or, without
    it, ``fraction`` of the main stage's ``train.epochs`` (rounded, at least 1), so a
    method's pre-stage keeps its share of a short or long schedule.
    """

    @model_validator(mode="after")
    def _one_length(self) -> StageConfig:
        if (self.epochs is None) == (self.fraction is None):
            raise ConfigError(
                f"stage {self.name!r}: give exactly one of 'epochs' and 'fraction' "
                f"(got epochs={self.epochs!r}, fraction={self.fraction!r})"
            )
        return self

    def resolved_epochs(self, main_epochs: int) -> int:
        """The stage's epochs for a main stage of ``main_epochs``."""
        if self.epochs is not None:
            return self.epochs
        assert self.fraction is not None
        return max(1, round(self.fraction * main_epochs))

    name: str
    epochs: int | None = Field(
        None, ge=0, description="epochs of the stage; None: 'fraction' of the main stage's"
    )
    fraction: float | None = Field(
        None, gt=0.0, le=1.0, description="length as a fraction of train.epochs (at least 1)"
    )
    losses: dict[str, float]
    train: list[str] = Field(default_factory=lambda: ["student"])
    optimizer: OptimizerConfig | None = None
    schedule: ScheduleConfig = ScheduleConfig(name="constant")


class DistillConfig(Strict):
    """Terms (each validated into its method's parameters), named views, stages."""

    terms: list[SerializeAsAny[TermParams]] = Field(
        default_factory=lambda: [term_params({"method": "ce"})]
    )
    views: dict[str, ViewSpec] = Field(
        default_factory=dict, description="named input views: {name: {type: ..., **params}}"
    )
    stages: list[StageConfig] | None = Field(
        None, description="None: the methods' own pre-stages; []: none; a list: these"
    )

    @field_validator("terms", mode="before")
    @classmethod
    def _terms(cls, value: Any) -> Any:
        if not isinstance(value, list):
            return value  # pydantic reports the type
        return [term_params(spec, f"distill.terms.{i}") for i, spec in enumerate(value)]

    @field_validator("views", mode="before")
    @classmethod
    def _views(cls, value: Any) -> Any:
        from kdlab.views import build_view  # noqa: PLC0415 - views import torch

        if not isinstance(value, typing.Mapping):
            return value
        out = {}
        for name, spec in value.items():
            where = f"distill.views.{name}"
            if name == DEFAULT_VIEW:
                raise ConfigError(f"{where}: 'default' is reserved for the unchanged batch")
            if isinstance(spec, ViewSpec):
                spec = spec.model_dump()
            build_view(spec, where)  # the factory checks its parameters
            out[name] = ViewSpec.model_validate(dict(spec))
        return out

    @model_validator(mode="after")
    def _cross_check(self) -> DistillConfig:
        """Names that refer to each other: term names, the views terms use, stages' losses."""
        from kdlab.methods import METHODS  # noqa: PLC0415

        seen: dict[str, int] = {}
        for i, term in enumerate(self.terms):
            if term.term_name in seen:
                raise ConfigError(
                    f"distill.terms.{i}: a term named {term.term_name!r} already exists "
                    f"(distill.terms.{seen[term.term_name]}); give one a distinct 'name'"
                )
            seen[term.term_name] = i
            for role in ("student_view", "teacher_view"):
                view = getattr(term, role)
                if view != DEFAULT_VIEW and view not in self.views:
                    raise ConfigError(
                        f"distill.terms.{i}.{role}: unknown view {view!r}; "
                        f"{did_you_mean(view, [DEFAULT_VIEW, *self.views])}"
                    )
        names = [s.name for s in self.stages or []]
        if MAIN_STAGE in names or len(set(names)) != len(names):
            raise ConfigError(
                f"distill.stages: stage names must be unique and not {MAIN_STAGE!r}: {names}"
            )
        terms = {t.term_name: t for t in self.terms}
        for i, stage in enumerate(self.stages or []):
            for key in stage.losses:
                name, _, mode = key.partition(".")
                if name not in terms:
                    raise ConfigError(
                        f"distill.stages.{i}.losses: unknown loss {key!r}; "
                        f"{did_you_mean(name, terms)}"
                    )
                method = METHODS.get(terms[name].method)
                if mode and not callable(getattr(method, f"loss_{mode}", None)):
                    raise ConfigError(
                        f"distill.stages.{i}.losses: term {name!r} ({terms[name].method}) has "
                        f"no loss mode {mode!r}"
                    )
        return self


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
    distill: DistillConfig = Field(default_factory=DistillConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)

    @field_validator("plugins")
    @classmethod
    def _load_plugins(cls, paths: list[str]) -> list[str]:
        # Loaded while the recipe is validated, so every process that reads it (spawned
        # DDP workers, eval, export) has the plugin's names; kept as absolute paths.
        from kdlab.plugins import load_plugins  # noqa: PLC0415

        try:
            return load_plugins(paths)
        except KdlabError as err:  # kdlab's own errors pass through verbatim: name the key
            raise ConfigError(f"key 'plugins': {err}") from None


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
        if any(isinstance(m, SerializeAsAny) for m in fields[key].metadata):
            continue  # a registry picks the model (terms, evaluator): its validator checks
        sub = _model_in(fields[key].annotation)
        if sub is not None:
            check_unknown_keys(sub, value, path)


def _format_validation_error(err: ValidationError, where: str) -> str:
    lines = []
    for e in err.errors():
        cause = (e.get("ctx") or {}).get("error")
        if isinstance(cause, KdlabError):  # raised by kdlab's own validators: already clear
            lines.append(str(cause))
            continue
        loc = ".".join(str(p) for p in e["loc"])
        key = f"{where}.{loc}" if where and loc else (where or loc)
        got = e.get("input")
        shown = repr(got) if not isinstance(got, dict) else "a mapping"
        lines.append(f"key {key!r}: {e['msg']} (got {shown})")
    return "; ".join(dict.fromkeys(lines))


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


def set_dotted(data: dict[str, Any], key: str, value: Any, what: str = "key") -> None:
    """Set ``a.b.c`` in nested mappings and lists, in place.

    A list item is addressed by its index (negative counts from the end) or, for lists
    of mappings such as ``distill.terms``, by the one item whose ``name`` or ``method``
    is that word: ``distill.terms.kd.T``. Missing (or null) mappings on the way are
    created. ``what`` names the caller in errors ("override", "search key").
    """
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"{what} {key!r} is not a dotted key like train.epochs")
    node: Any = data
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, list):
            idx = _list_item(node, part, f"{what} {key!r}")
            if last:
                node[idx] = value
            else:
                node = node[idx]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            else:
                if node.get(part) is None:
                    node[part] = {}
                node = node[part]
        else:  # e.g. train.epochs.x=1: a scalar has no keys
            raise ConfigError(
                f"{what} {key!r}: {'.'.join(parts[:i])!r} is a {type(node).__name__}, "
                "not a mapping or list"
            )


def _list_item(node: list[Any], part: str, where: str) -> int:
    if part.lstrip("-").isdigit():
        idx = int(part)
        if -len(node) <= idx < len(node):
            return idx
    names = [(it.get("name") or it.get("method")) if isinstance(it, dict) else None for it in node]
    if names.count(part) == 1:
        return names.index(part)
    shown = [n for n in names if n]
    raise ConfigError(
        f"{where}: {part!r} is not an index of a list of {len(node)}"
        + (f" nor the name of one of its items {shown}" if shown else "")
    )


def apply_overrides(data: dict[str, Any], overrides: typing.Iterable[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides (values parsed as YAML) to a copy of ``data``."""
    data = copy.deepcopy(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key.path=value")
        dotted, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        set_dotted(data, dotted, value, what="override")
    return data


def load_recipe(
    source: str | Path | dict[str, Any], overrides: typing.Iterable[str] = ()
) -> RunConfig:
    """Load a recipe from a YAML file, a shipped recipe's name (``digits/kd``, see
    :mod:`kdlab.recipes`) or a dict, apply overrides, validate."""
    data = read_yaml(find(source)) if isinstance(source, (str, Path)) else copy.deepcopy(source)
    data = apply_overrides(data, overrides)
    return validate(RunConfig, data)


load_config = load_recipe  # the name earlier code uses


def dump_config(cfg: BaseModel) -> str:
    """The resolved config as YAML (what a run folder keeps)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
