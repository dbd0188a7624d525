"""Typed, frozen experiment configuration, validated when loaded.

Every component gets its own frozen dataclass. ``load_config`` reads a YAML file,
applies ``--set dotted.key=value`` overrides and builds the dataclasses strictly:
an unknown key, a wrong type or a value outside a ``Literal`` fails with the
dotted path and the file name, before any work (or any Ray resource) starts.

This module owns type coercion: :func:`coerce` checks a value against an annotation,
:func:`from_dict` builds any frozen dataclass of such fields (the sweep spec's sections
too), :func:`field_type` / :func:`coerce_value` check one dotted experiment key, and
:func:`validate` holds the experiment's cross-field rules.
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

from cadc_ray.methods import METHODS, resolved_integration
from cadc_ray.names import (  # the closed name sets, one per plug-in axis
    AlternationName,
    DatasetName,
    DuplicateRule,
    IdTableKind,
    IntegrationName,
    MethodName,
    NegativeSamplerName,
    PretrainerName,  # noqa: F401 (re-exported, like every name set)
    QROperation,
    TableCombine,
)

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
    # calibrated: d factors + zero bias column, Platt-scaled to a BCE logit (pretrain.als);
    # raw: d+1 raw factors, the export before issue #14 (to measure what calibration changes).
    als_export: Literal["calibrated", "raw"] = "calibrated"
    seed: int = 0
    # MF / MF-MLP teachers (ALS and methods without pretraining ignore them, as they ignore
    # the other MF settings: one sweep base serves every method). 0: run `epochs` epochs and
    # export the last. N: validate the teacher every N epochs and after the last (as the
    # TTNN, eval.selection_metric) and export the best validation epoch's tables;
    # early_stopping_patience validations without a gain then end the stage (0: never).
    eval_every: int = 0
    early_stopping_patience: int = 0


@dataclass(frozen=True)
class IdTableConfig:
    """One entity's id table: full, or compressed (METHOD 2; docs/compression.md).

    The target size is a memory budget: ``fraction`` of the full table's ``num_ids * D``
    floats, or ``rows`` rows of ``D`` floats (when set, it wins over ``fraction``).
    """

    kind: IdTableKind = "full"
    fraction: float = 1.0
    rows: int | None = None
    min_rows: int = 0  # a table with fewer ids than this stays full
    qr_op: QROperation = "mult"  # how the quotient and remainder rows combine
    robe_chunk: int = 32  # ROBE-Z: Z, the contiguous elements read per hash
    private_share: float = 0.5  # double hashing: share of the rows kept by the top ids
    teacher_dim: int = 2  # learned hash: teacher dimensions = internal tables
    combine: TableCombine = "sum"  # learned hash: how internal tables combine
    size_cap: float = 2.0  # learned hash: largest cluster, in multiples of the mean size
    init_steps: int = 200  # `init`: Adam steps fitting the compressed table to the MF rows
    # `init_frz` + learned_hash: a trainable hashed residual of this fraction (0: none).
    residual_fraction: float = 0.0
    seed: int = 0  # hash functions


@dataclass(frozen=True)
class IdTablesConfig:
    """``default`` applies to both entities unless ``user`` / ``item`` is given."""

    default: IdTableConfig = field(default_factory=IdTableConfig)
    user: IdTableConfig | None = None
    item: IdTableConfig | None = None

    def for_entity(self, entity: str) -> IdTableConfig:
        """The table config of ``entity`` ("user" or "item")."""
        specific = self.user if entity == "user" else self.item
        return specific if specific is not None else self.default


FrozenRows = Literal["raw", "standardized", "whitened"]
"""``model.frozen_rows`` (``models.embeddings.MappedFrozenIdEmbedding``)."""


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
    # What the towers of init_frz / residual read of the frozen rows: raw (the rows), or
    # through a fixed map fitted on the table: standardized (columns to mean 0, variance 1)
    # or whitened (ZCA). The teacher's own score in residual always uses the raw rows.
    frozen_rows: FrozenRows = "raw"
    id_table: IdTablesConfig = field(default_factory=IdTablesConfig)  # compression, METHOD 2


IdTableUpdates = Literal["auto", "sparse", "dense"]
"""``train.id_table_updates``: how the TTNN's trainable id tables are optimized."""


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
    # auto: id tables of >= 10,000 rows are updated row-sparsely (SparseAdam, lazy Adam);
    # sparse: every trainable embedding table, feature tables too; dense: Adam over whole
    # tables (training.optim).
    id_table_updates: IdTableUpdates = "auto"


@dataclass(frozen=True)
class EvalConfig:
    ks: tuple[int, ...] = (10,)
    selection_metric: str = "hr@10"  # validation metric that picks the epoch
    user_batch_size: int = 1024
    # Model selection on a fixed uniform sample of this many validation users (null: all).
    # Test always ranks every test user. For catalogues where one full ranking costs
    # minutes (Epinions: 22k users x 296k items) and is paid after every epoch.
    validation_users: int | None = None
    validation_seed: int = 0  # which users: the same for every method of a table


UseGpu = Literal["auto", "yes", "no"]
"""``resources.use_gpu``: auto uses GPU workers when the cluster has GPUs."""

InProcess = Literal["auto", "never"]
"""``resources.in_process``: ``auto`` runs a one-worker CPU stage in Train's local mode: in
the command's own process when the command started its own local Ray, in one Ray task on any
other Ray (a cluster), where a streamed stage keeps its worker group. A worker group adds
its start, 5.9-8.7 s per stage on ML-100K, and no capacity (``runtime.session.stage_resources``).
``never`` always starts the worker group."""

ShareWorkerGroup = Literal["auto", "never"]
"""``resources.share_worker_group``: ``auto`` trains an MF / MF-MLP teacher and the TTNN of
one ``cadc_ray.run`` in one Train worker group when both stages would start one of the
same shape (GPUs, 2+ workers, restarts, or a stream on a cluster), so the group's start
is paid once (``runtime.joint``); ``never`` starts one per stage. Runs that reuse a
teacher, and sweeps (whose trials share teachers), train the stages apart."""

Ingest = Literal["auto", "memory", "stream"]
"""``resources.ingest``: how Train workers get their training rows.

``memory``: every worker holds all rows (fastest for data that fits; bit-exact resume);
``stream``: each worker streams only its own shard every epoch through Ray Data (memory
bounded by batch, shuffle buffer and model); ``auto``: ``stream`` above
``resources.stream_above_rows`` training rows, else ``memory`` (docs/scale.md)."""


@dataclass(frozen=True)
class ResourcesConfig:
    num_workers: int = 1
    use_gpu: UseGpu = "auto"
    cpus_per_worker: int = 1
    torch_threads: int = 1
    max_failures: int = 0  # Train FailureConfig: restarts from the last checkpoint
    in_process: InProcess = "auto"
    share_worker_group: ShareWorkerGroup = "auto"
    ingest: Ingest = "auto"
    # 20 M rows x (3 int64 columns + 2 int64 tensors) is about 800 MB per worker in memory.
    stream_above_rows: int = 20_000_000
    shuffle_buffer_rows: int = 100_000  # streamed rows shuffled locally (per worker)
    # How far a stream's read may fill the object store ahead of its workers, MiB (all the
    # stream's workers together). None: Ray Data's own budget, a share of the node's store.
    # A cap bounds the store a stream takes, e.g. with several streaming trials per node,
    # and slows the read (docs/scale.md, "A stream with no barrier").
    stream_object_store_mib: int | None = None
    # use_gpu yes on a cluster whose GPU nodes are all down: how long to wait for the
    # autoscaler to start one before failing (cloud GPU nodes take minutes to set up).
    gpu_wait_seconds: int = 900


@dataclass(frozen=True)
class ExperimentConfig:
    name: str = "experiment"
    method: MethodName = "cadc"
    seed: int = 0
    # Relative paths here and in data.path / data.prepared_dir are relative to the working
    # directory of the command; load_config makes them absolute (see absolute_paths).
    output_root: str = "runs"
    data: DataConfig = field(default_factory=DataConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)


T = TypeVar("T")

FILE_KEY = "file_key"
"""Field metadata key: the name a field has in files when it differs from the attribute."""


def file_key(name: str) -> dict[str, str]:
    """Field metadata naming the field ``name`` in files (``kind`` is written ``type``)."""
    return {FILE_KEY: name}


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def coerce(value: Any, tp: Any, where: str) -> Any:
    """Checks ``value`` against the annotation ``tp``; returns it in canonical form.
    Errors name ``where`` (the dotted path of the value).

    Annotations: ``bool``/``int``/``float``/``str``, ``Literal``, unions with ``None``,
    ``tuple[X, ...]``, ``dict[str, X]``, frozen dataclasses, and ``Any`` (taken as is,
    for values a caller checks itself).
    """
    if tp is Any:
        return value
    origin = get_origin(tp)
    if origin is Literal:
        allowed = get_args(tp)
        if isinstance(value, bool) and {"yes", "no"} <= set(allowed):
            # YAML 1.1 (PyYAML) reads an unquoted yes/no (and on/off) as a boolean, in
            # files and in --set alike: `use_gpu: yes` means "yes".
            value = "yes" if value else "no"
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
                return coerce(value, option, where)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(
            errors[0] if len(errors) == 1 else f"{where}: {value!r} fits none of {tp}"
        )
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (item_type, _ellipsis) = get_args(tp)
        return tuple(coerce(v, item_type, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        key_type, value_type = get_args(tp)
        assert key_type is str, f"{where}: only dict[str, ...] is supported"
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        for key in value:
            if not isinstance(key, str):
                raise ConfigError(f"{where}: keys must be strings, got {key!r}")
        return {key: coerce(v, value_type, f"{where}.{key}") for key, v in value.items()}
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
    """``cls`` from ``raw``: every key known (by its :func:`file_key` name), every field
    without a default present, every value of its field's type."""
    hints = get_type_hints(cls)
    fields = {
        f.metadata.get(FILE_KEY, f.name): f
        for f in dataclasses.fields(cls)  # type: ignore[arg-type]
    }

    def path(key: Any) -> str:
        return f"{where}.{key}" if where else str(key)

    for key in raw:
        if key not in fields:
            raise ConfigError(f"{path(key)}: unknown key (known: {sorted(fields)})")
    for key, declared in fields.items():
        has_default = (
            declared.default is not dataclasses.MISSING
            or declared.default_factory is not dataclasses.MISSING
        )
        if not has_default and key not in raw:
            raise ConfigError(f"{path(key)}: missing (required)")
    kwargs = {
        fields[key].name: coerce(value, hints[fields[key].name], path(key))
        for key, value in raw.items()
    }
    return cls(**kwargs)


def from_dict(cls: type[T], raw: Mapping[str, Any], source: str = "<dict>") -> T:
    """Builds the frozen dataclass ``cls`` from a plain mapping, strictly. Errors name
    ``source`` and the dotted path (a field's :func:`file_key` name where it has one)."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{source}: top level must be a mapping, got {type(raw).__name__}")
    try:
        return _build(cls, raw, "")
    except ConfigError as error:
        raise ConfigError(f"{source}: {error}") from None


def field_type(dotted: str) -> Any:
    """The annotation of the leaf ``dotted`` in ExperimentConfig (``"train.epochs"`` ->
    ``int``). ConfigError, reading ``"<dotted prefix>: <problem>"``, for an unknown key or
    a section."""
    cls: Any = ExperimentConfig
    parts = dotted.split(".")
    for depth, part in enumerate(parts):
        if not (dataclasses.is_dataclass(cls) and isinstance(cls, type)):
            raise ConfigError(f"{'.'.join(parts[:depth])}: is not a section")
        hints = get_type_hints(cls)
        if part not in hints:
            where = ".".join(parts[: depth + 1])
            raise ConfigError(f"{where}: unknown config key (known: {sorted(hints)})")
        cls = hints[part]
    if dataclasses.is_dataclass(cls):
        raise ConfigError(f"{dotted}: is a section, not a value")
    return cls


def coerce_value(dotted: str, value: Any, where: str | None = None) -> Any:
    """``value`` checked against the type of the experiment key ``dotted``, in canonical form
    (``[5, 10]`` -> ``(5, 10)`` for ``eval.ks``, ``2`` -> ``2.0`` for a float). No cross-field
    checks (:func:`validate`). Errors name ``where`` (default: ``dotted``)."""
    return coerce(value, field_type(dotted), dotted if where is None else where)


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


def merge_mappings(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """A deep copy of ``base`` with ``over`` merged in: nested mappings merge key by key,
    anything else in ``over`` replaces what ``base`` had (an inline config over a file)."""
    merged: dict[str, Any] = yaml.safe_load(yaml.safe_dump(dict(base))) or {}
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = merge_mappings(merged[key], value)
        else:
            merged[key] = value
    return merged


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
    return absolute_paths(config)


def local_path(path: str, cwd: Path | None = None) -> str:
    """``path`` with ``$VARS`` and ``~`` expanded, made absolute against ``cwd`` (default:
    the working directory of the command).

    Train workers, Ray tasks and Tune trials do not run in the driver's working directory:
    a relative path handed to them names another place, or nothing. So every path is made
    absolute once, in the driver, when the config is loaded.
    """
    expanded = Path(os.path.expandvars(path)).expanduser()
    if not expanded.is_absolute():
        expanded = (cwd if cwd is not None else Path.cwd()) / expanded
    return str(Path(os.path.normpath(expanded)))


def absolute_paths(config: ExperimentConfig, cwd: Path | None = None) -> ExperimentConfig:
    """``config`` with ``output_root``, ``data.path`` and ``data.prepared_dir`` absolute
    (relative ones are relative to ``cwd``, default the working directory). Idempotent."""
    data = config.data
    new_data = dataclasses.replace(
        data,
        path=local_path(data.path, cwd) if data.path is not None else None,
        prepared_dir=local_path(data.prepared_dir, cwd) if data.prepared_dir is not None else None,
    )
    return dataclasses.replace(
        config, output_root=local_path(config.output_root, cwd), data=new_data
    )


def replace_dotted(config: ExperimentConfig, values: Mapping[str, Any]) -> ExperimentConfig:
    """A copy of ``config`` with dotted keys replaced, validated like a loaded file."""
    raw = apply_overrides(to_dict(config), values)
    result = from_dict(ExperimentConfig, raw, "<override>")
    validate(result, "<override>")
    return absolute_paths(result)


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
        "resources.stream_above_rows": config.resources.stream_above_rows,
        "resources.shuffle_buffer_rows": config.resources.shuffle_buffer_rows,
        "data.synthetic.num_users": config.data.synthetic.num_users,
        "data.synthetic.num_items": config.data.synthetic.num_items,
        "data.synthetic.num_interactions": config.data.synthetic.num_interactions,
    }
    for path, value in positive_ints.items():
        if value < 1:
            fail(path, f"must be >= 1, got {value}")
    cap = config.resources.stream_object_store_mib
    if cap is not None and cap < 1:
        fail("resources.stream_object_store_mib", f"must be >= 1 or null, got {cap}")
    if config.resources.num_workers < 0:
        fail(
            "resources.num_workers",
            f"must be >= 0 (0 = run in-process), got {config.resources.num_workers}",
        )
    for path, value in {
        "pretrain.num_negatives": config.pretrain.num_negatives,
        "pretrain.eval_every": config.pretrain.eval_every,
        "pretrain.early_stopping_patience": config.pretrain.early_stopping_patience,
        "train.num_negatives": config.train.num_negatives,
        "train.early_stopping_patience": config.train.early_stopping_patience,
        "resources.max_failures": config.resources.max_failures,
        "resources.gpu_wait_seconds": config.resources.gpu_wait_seconds,
    }.items():
        if value < 0:
            fail(path, f"must be >= 0, got {value}")
    if not config.eval.ks or any(k < 1 for k in config.eval.ks):
        fail(
            "eval.ks", f"must be a non-empty list of positive cut-offs, got {list(config.eval.ks)}"
        )
    if config.train.id_table_updates == "sparse" and config.train.weight_decay > 0:
        fail(
            "train.id_table_updates",
            f"'sparse' (torch.optim.SparseAdam) has no weight decay, got train.weight_decay="
            f"{config.train.weight_decay}; use auto (dense when weight decay is on) or dense",
        )
    if config.eval.validation_users is not None and config.eval.validation_users < 1:
        fail(
            "eval.validation_users",
            f"must be >= 1 (or null for every validation user), got {config.eval.validation_users}",
        )
    metric, _, cutoff = config.eval.selection_metric.partition("@")
    if metric not in ("hr", "ndcg") or not cutoff.isdigit() or int(cutoff) not in config.eval.ks:
        fail(
            "eval.selection_metric",
            f"must be hr@k or ndcg@k with k in eval.ks {list(config.eval.ks)}, "
            f"got {config.eval.selection_metric!r}",
        )
    spec = METHODS[config.method]
    if config.pretrain.early_stopping_patience > 0 and config.pretrain.eval_every == 0:
        fail(
            "pretrain.early_stopping_patience",
            f"{config.pretrain.early_stopping_patience} needs validation: set "
            "pretrain.eval_every >= 1 (0 runs every epoch unvalidated)",
        )
    integration = config.model.integration
    if spec.pretrainer is None and integration not in ("auto", "none"):
        fail(
            "model.integration",
            f"method {config.method!r} trains without pretraining; integration must be "
            f"'auto' or 'none', got {integration!r}",
        )
    if spec.pretrainer is not None and integration == "none":
        fail("model.integration", f"method {config.method!r} pretrains; 'none' would discard it")
    if config.model.frozen_rows != "raw":
        resolved = resolved_integration(config.method, integration)
        compressed = [
            entity
            for entity in ("user", "item")
            if config.model.id_table.for_entity(entity).kind != "full"
        ]
        if resolved not in ("init_frz", "residual") or compressed:
            fail(
                "model.frozen_rows",
                f"{config.model.frozen_rows!r} maps the frozen rows that init_frz and residual "
                f"towers read from full tables; method {config.method!r} with integration "
                f"{resolved!r}{' and compressed ' + '/'.join(compressed) + ' tables' if compressed else ''} "
                "has none; use raw",
            )
    if integration == "residual" and spec.pretrainer == "mf_mlp":
        fail(
            "model.integration",
            f"'residual' adds the teacher's own score, and the teacher of method "
            f"{config.method!r} (mf_mlp) scores through an interaction MLP that is not "
            "exported with its rows; use cadc or cadc_als",
        )
    if (
        spec.pretrainer is not None
        and config.model.embedding_dim != config.pretrain.embedding_dim + 1
    ):
        fail(
            "model.embedding_dim",
            f"must equal pretrain.embedding_dim + 1 (pretrained rows carry a bias element): "
            f"{config.model.embedding_dim} != {config.pretrain.embedding_dim} + 1",
        )
    if config.resources.ingest == "stream" and spec.rebalance != "none":
        fail(
            "resources.ingest",
            f"'stream' cannot serve method {config.method!r}: its {spec.rebalance} "
            "rebalancing resamples the whole training set in memory; use 'memory' or 'auto'",
        )
    if integration == "hybrid" and config.model.embedding_dim < 3:
        fail("model.embedding_dim", "hybrid integration needs at least 3 dimensions")
    _validate_id_tables(config, fail)


COMPRESSIBLE_INTEGRATIONS = ("none", "init")
"""Integrations whose id table is trainable, so a compressed table can stand in for it."""

FROZEN_COMPRESSIBLE: dict[str, tuple[str, ...]] = {"init_frz": ("learned_hash",)}
"""Frozen integrations with a compressed form: ``init_frz`` serves per-cluster mean rows."""


def _validate_id_tables(
    config: ExperimentConfig, fail: typing.Callable[[str, str], typing.NoReturn]
) -> None:
    """Checks each entity's ``model.id_table`` against the method and the integration."""
    tables = config.model.id_table
    integration = resolved_integration(config.method, config.model.integration)
    dim = config.model.embedding_dim
    for entity in ("user", "item"):
        table = tables.for_entity(entity)
        path = f"model.id_table.{entity if getattr(tables, entity) else 'default'}"
        if table.kind == "full":
            continue
        if table.rows is not None and table.rows < 1:
            fail(f"{path}.rows", f"must be >= 1, got {table.rows}")
        if not 0 < table.fraction <= 1:
            fail(f"{path}.fraction", f"must lie in (0, 1], got {table.fraction}")
        if table.min_rows < 0:
            fail(f"{path}.min_rows", f"must be >= 0, got {table.min_rows}")
        if table.init_steps < 0:
            fail(f"{path}.init_steps", f"must be >= 0, got {table.init_steps}")
        if table.kind == "robe" and not 1 <= table.robe_chunk <= dim:
            fail(f"{path}.robe_chunk", f"must lie in [1, model.embedding_dim={dim}]")
        if table.kind == "double_hash" and not 0 <= table.private_share < 1:
            fail(f"{path}.private_share", f"must lie in [0, 1), got {table.private_share}")
        if table.kind == "learned_hash" and table.size_cap < 1:
            fail(f"{path}.size_cap", f"must be >= 1 (mean cluster sizes), got {table.size_cap}")
        if table.kind == "qr" and table.qr_op == "concat" and dim < 2:
            fail(f"{path}.qr_op", "concat needs model.embedding_dim >= 2")
        if table.kind == "learned_hash":
            if not 1 <= table.teacher_dim <= dim:
                fail(f"{path}.teacher_dim", f"must lie in [1, model.embedding_dim={dim}]")
            if METHODS[config.method].pretrainer is None:
                fail(
                    f"{path}.kind",
                    f"learned_hash clusters ids by the pretrained MF (its teacher); method "
                    f"{config.method!r} pretrains nothing: use cadc / cadc_als with "
                    "integration 'init'",
                )
            if table.teacher_dim > config.pretrain.embedding_dim + 1:
                fail(f"{path}.teacher_dim", "must not exceed the pretrained width")
        if not 0 <= table.residual_fraction <= 1:
            fail(f"{path}.residual_fraction", f"must lie in [0, 1], got {table.residual_fraction}")
        if table.residual_fraction > 0 and integration != "init_frz":
            fail(f"{path}.residual_fraction", "is for the frozen (init_frz) learned hash only")
        frozen_kinds = FROZEN_COMPRESSIBLE.get(integration, ())
        if integration not in COMPRESSIBLE_INTEGRATIONS and table.kind not in frozen_kinds:
            fail(
                f"{path}.kind",
                f"a compressed id table ({table.kind!r}) replaces a trainable table; "
                f"integration {integration!r} keeps the pretrained table (frozen), so only "
                f"{list(COMPRESSIBLE_INTEGRATIONS)} compose with it (and init_frz with "
                "learned_hash: frozen per-cluster means)",
            )
