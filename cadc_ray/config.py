"""Typed, frozen experiment configuration, validated when loaded.

Every component gets its own frozen dataclass. ``load_config`` reads a YAML file,
applies ``--set dotted.key=value`` overrides and builds the dataclasses strictly:
an unknown key, a wrong type or a value outside a ``Literal`` fails with the
dotted path and the file name, before any work (or any Ray resource) starts.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

DatasetName = Literal["synthetic", "ml-100k", "ml-1m", "ml-10m", "epinions", "generic"]
MethodName = Literal[
    "cadc", "cadc_mlp", "cadc_als", "random", "over_sampling", "under_sampling", "logq", "gs"
]
IntegrationName = Literal["auto", "init_frz", "init", "hybrid", "linear", "mlp", "none"]
PretrainerName = Literal["mf", "mf_mlp", "als"]
NegativeSamplerName = Literal["uniform", "popularity"]
AlternationName = Literal["epoch", "batch", "none"]
DuplicateRule = Literal["keep_last", "keep_first", "error"]

DATA_DIR_ENV = "CADC_DATA_DIR"
"""Environment variable holding the folder of raw datasets (e.g. ``../shared/data``)."""


class ConfigError(ValueError):
    """A configuration problem, with the dotted path and the source named in the message."""


@dataclass(frozen=True)
class SyntheticConfig:
    """The embedded default dataset: latent-factor users/items, power-law popularity."""

    num_users: int = 4000
    num_items: int = 2000
    num_interactions: int = 200_000  # a target: the manifest has the exact count
    latent_dim: int = 16
    popularity_exponent: float = 0.8
    feature_noise: float = 1.5  # std of the noise added to unit-variance feature signals
    shard_rows: int = 1_000_000
    seed: int = 0
    # How strongly choices follow the latent affinity (lower: more collaborative signal).
    temperature: float = 0.2
    candidates_per_interaction: int = 16  # popularity-drawn candidates per kept interaction
    activity_sigma: float = 0.8  # log-normal spread of interactions per user


@dataclass(frozen=True)
class GenericColumnsConfig:
    """Column mapping for ``dataset: generic`` (any CSV/TSV/Parquet interaction file)."""

    user: str = "user_id"
    item: str = "item_id"
    timestamp: str | None = "timestamp"
    rating: str | None = None
    delimiter: str | None = None  # None: inferred from the file suffix (.csv ',', .tsv '\t')
    has_header: bool = True


@dataclass(frozen=True)
class DataConfig:
    dataset: DatasetName = "synthetic"
    # Raw input: a folder or file. None: $CADC_DATA_DIR/<dataset folder> for named datasets.
    path: str | None = None
    # Where the prepared Parquet shards go. None: <output_root>/prepared/<dataset>-<digest>
    # (the digest covers the settings that define the content).
    prepared_dir: str | None = None
    duplicates: DuplicateRule = "keep_last"
    filter_ratio: float = 10.0
    sample_seed: int = 0
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    generic: GenericColumnsConfig = field(default_factory=GenericColumnsConfig)


@dataclass(frozen=True)
class PretrainConfig:
    """Stage 1: MF (or MF-MLP, or ALS) on all of D_full (METHOD 1.2)."""

    embedding_dim: int = 95  # d; rows have d+1 elements, the last is the bias
    epochs: int = 30
    batch_size: int = 4096
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    num_negatives: int = 4
    negative_sampler: NegativeSamplerName = "uniform"
    alternate: AlternationName = "epoch"
    mlp_hidden: tuple[int, ...] = (128, 64)  # CADC-MLP interaction network
    als_iterations: int = 15
    als_regularization: float = 0.01
    als_alpha: float = 1.0
    seed: int = 0


@dataclass(frozen=True)
class ModelConfig:
    """Stage 2: the two-tower network (METHOD 1.3)."""

    embedding_dim: int = 96  # id embedding size; pretrained rows are pretrain.embedding_dim + 1
    integration: IntegrationName = "auto"  # auto: the method's default
    feature_embedding_dim: int = 16
    tower_hidden: tuple[int, ...] = (256, 128)
    output_dim: int = 64
    adapter_hidden: int = 128  # the `mlp` integration technique's hidden width
    use_features: bool = True
    dedup: bool = True  # RecD: run towers once per unique id in a batch


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 30
    batch_size: int = 1024
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    num_negatives: int = 4
    negative_sampler: NegativeSamplerName = "uniform"
    early_stopping_patience: int = 5  # epochs without val improvement; 0 disables
    eval_every: int = 1
    seed: int = 0


@dataclass(frozen=True)
class EvalConfig:
    ks: tuple[int, ...] = (10,)
    selection_metric: str = "hr@10"  # validation metric that picks the epoch
    user_batch_size: int = 1024


@dataclass(frozen=True)
class ResourcesConfig:
    num_workers: int = 1
    use_gpu: Literal["auto", "yes", "no"] = "auto"  # auto: GPU workers when the cluster has GPUs
    cpus_per_worker: int = 1
    torch_threads: int = 1
    max_failures: int = 0  # Train FailureConfig: restarts from the last checkpoint


@dataclass(frozen=True)
class ExperimentConfig:
    name: str = "experiment"
    method: MethodName = "cadc"
    seed: int = 0
    output_root: str = "runs"
    data: DataConfig = field(default_factory=DataConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)


T = TypeVar("T")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Checks ``value`` against the annotation ``tp``; returns it in canonical form."""
    origin = get_origin(tp)
    if origin is Literal:
        allowed = get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{where}: {value!r} is not one of {list(allowed)}")
        return value
    if origin in (Union, types.UnionType):
        options = get_args(tp)
        if value is None:
            if type(None) in options:
                return None
            raise ConfigError(f"{where}: must not be null")
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, where)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(
            errors[0] if len(errors) == 1 else f"{where}: {value!r} fits none of {tp}"
        )
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (item_type, _ellipsis) = get_args(tp)
        return tuple(_coerce(v, item_type, f"{where}[{i}]") for i, v in enumerate(value))
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if dataclasses.is_dataclass(value) and isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return _build(tp, value, where)
    if value is None:
        raise ConfigError(f"{where}: must not be null")
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported annotation {_type_name(tp)}")  # pragma: no cover


def _build(cls: type[T], raw: Mapping[str, Any], where: str) -> T:
    hints = get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    for key in raw:
        if key not in known:
            path = f"{where}.{key}" if where else str(key)
            raise ConfigError(f"{path}: unknown key (known: {sorted(known)})")
    kwargs = {
        key: _coerce(value, hints[key], f"{where}.{key}" if where else key)
        for key, value in raw.items()
    }
    return cls(**kwargs)


def from_dict(cls: type[T], raw: Mapping[str, Any], source: str = "<dict>") -> T:
    """Builds ``cls`` from a plain mapping, strictly. Errors name ``source``."""
    try:
        return _build(cls, raw, "")
    except ConfigError as error:
        raise ConfigError(f"{source}: {error}") from None


def to_dict(config: Any) -> dict[str, Any]:
    """Plain, YAML/JSON-serializable form (tuples become lists)."""

    def plain(value: Any) -> Any:
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        return value

    result = plain(config)
    assert isinstance(result, dict)
    return result


def parse_override(text: str) -> tuple[str, Any]:
    """``"train.epochs=5"`` -> ``("train.epochs", 5)``; the value is read as YAML."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {text!r}: expected dotted.key=value")
    return key.strip(), yaml.safe_load(value) if value.strip() else ""


def apply_overrides(
    raw: dict[str, Any], overrides: Sequence[tuple[str, Any]] | Mapping[str, Any]
) -> dict[str, Any]:
    """Returns a deep copy of ``raw`` with each dotted key set (mappings created as needed)."""
    result: dict[str, Any] = yaml.safe_load(yaml.safe_dump(raw)) if raw else {}
    items = overrides.items() if isinstance(overrides, Mapping) else overrides
    for dotted, value in items:
        node = result
        parts = dotted.split(".")
        for depth, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"{'.'.join(parts[: depth + 1])}: is not a section")
            node = child
        node[parts[-1]] = value
    return result


def read_yaml_mapping(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Reads a YAML file that must hold a mapping; errors name the file."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"{file}: config file not found")
    try:
        raw = yaml.safe_load(file.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise ConfigError(f"{file}: not valid YAML: {error}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{file}: top level must be a mapping, got {type(raw).__name__}")
    return raw


def load_config(
    path: str | os.PathLike[str] | None,
    overrides: Sequence[str] = (),
) -> ExperimentConfig:
    """Loads an experiment config file (or the defaults when ``path`` is None) + ``--set``s."""
    raw = read_yaml_mapping(path) if path is not None else {}
    parsed = [parse_override(text) for text in overrides]
    source = str(path) if path is not None else "<defaults>"
    if parsed:
        source += " with --set " + ", ".join(text for text in overrides)
    config = from_dict(ExperimentConfig, apply_overrides(raw, parsed), source)
    validate(config, source)
    return config


def replace_dotted(config: ExperimentConfig, values: Mapping[str, Any]) -> ExperimentConfig:
    """A copy of ``config`` with dotted keys replaced, validated like a loaded file."""
    raw = apply_overrides(to_dict(config), values)
    result = from_dict(ExperimentConfig, raw, "<override>")
    validate(result, "<override>")
    return result


def validate(config: ExperimentConfig, source: str) -> None:
    """Cross-field checks that types alone cannot express."""

    def fail(path: str, message: str) -> typing.NoReturn:
        raise ConfigError(f"{source}: {path}: {message}")

    if config.data.filter_ratio < 1:
        fail(
            "data.filter_ratio",
            f"must be >= 1 (1/ratio of D_full is sampled), got {config.data.filter_ratio}",
        )
    positive_ints = {
        "pretrain.embedding_dim": config.pretrain.embedding_dim,
        "pretrain.epochs": config.pretrain.epochs,
        "pretrain.batch_size": config.pretrain.batch_size,
        "model.embedding_dim": config.model.embedding_dim,
        "model.output_dim": config.model.output_dim,
        "train.epochs": config.train.epochs,
        "train.batch_size": config.train.batch_size,
        "train.eval_every": config.train.eval_every,
        "resources.cpus_per_worker": config.resources.cpus_per_worker,
        "resources.torch_threads": config.resources.torch_threads,
        "data.synthetic.num_users": config.data.synthetic.num_users,
        "data.synthetic.num_items": config.data.synthetic.num_items,
        "data.synthetic.num_interactions": config.data.synthetic.num_interactions,
    }
    for path, value in positive_ints.items():
        if value < 1:
            fail(path, f"must be >= 1, got {value}")
    if config.resources.num_workers < 0:
        fail(
            "resources.num_workers",
            f"must be >= 0 (0 = run in-process), got {config.resources.num_workers}",
        )
    for path, value in {
        "pretrain.num_negatives": config.pretrain.num_negatives,
        "train.num_negatives": config.train.num_negatives,
        "train.early_stopping_patience": config.train.early_stopping_patience,
        "resources.max_failures": config.resources.max_failures,
    }.items():
        if value < 0:
            fail(path, f"must be >= 0, got {value}")
    if not config.eval.ks or any(k < 1 for k in config.eval.ks):
        fail(
            "eval.ks", f"must be a non-empty list of positive cut-offs, got {list(config.eval.ks)}"
        )
    metric, _, cutoff = config.eval.selection_metric.partition("@")
    if metric not in ("hr", "ndcg") or not cutoff.isdigit() or int(cutoff) not in config.eval.ks:
        fail(
            "eval.selection_metric",
            f"must be hr@k or ndcg@k with k in eval.ks {list(config.eval.ks)}, "
            f"got {config.eval.selection_metric!r}",
        )
    from cadc_ray.methods import METHODS  # local: methods imports config

    spec = METHODS[config.method]
    integration = config.model.integration
    if spec.pretrainer is None and integration not in ("auto", "none"):
        fail(
            "model.integration",
            f"method {config.method!r} trains without pretraining; integration must be "
            f"'auto' or 'none', got {integration!r}",
        )
    if spec.pretrainer is not None and integration == "none":
        fail("model.integration", f"method {config.method!r} pretrains; 'none' would discard it")
    if (
        spec.pretrainer is not None
        and config.model.embedding_dim != config.pretrain.embedding_dim + 1
    ):
        fail(
            "model.embedding_dim",
            f"must equal pretrain.embedding_dim + 1 (pretrained rows carry a bias element): "
            f"{config.model.embedding_dim} != {config.pretrain.embedding_dim} + 1",
        )
    if integration == "hybrid" and config.model.embedding_dim < 3:
        fail("model.embedding_dim", "hybrid integration needs at least 3 dimensions")
