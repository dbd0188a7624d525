"""Sweep specs: typed, frozen and validated when loaded, before any trial or Ray resource.

A spec is a YAML mapping (``tune_specs/*.yaml``)::

    name: ratio                          # sweep name (output folder, Tune experiment)
    base: ../configs/some.yaml           # optional experiment config file (relative to the spec)
    base_config: {train: {epochs: 8}}    # optional inline experiment config (merged over `base`)
    overrides: {train.epochs: 8}         # optional dotted experiment keys (applied last)
    space:                               # dotted experiment keys -> a distribution
      method: {type: grid, values: [cadc, random]}
      data.filter_ratio: {type: grid, values: [2, 5, 10]}
    extra_trials: [{method: gs}]         # grid only: explicit extra points
    searcher: {type: grid}               # or {type: optuna, sampler: tpe, seed: 0, storage: null}
    objectives: [{metric: val_hr@10, mode: max}]   # validation or cost metrics, never test_*
    num_samples: 1                       # optuna: number of trials; grid: must be 1
    max_concurrent_trials: 2
    trial_resources: {num_workers: 1, cpus_per_worker: 1, use_gpu: auto, torch_threads: 1}
    early_stopping: {type: asha, metric: val_hr@10, mode: max, grace_period: 2}
    output_dir: runs/sweeps/ratio
    storage_path: null                   # Tune/Train storage root (URI or path); null: output_dir
    ray: {num_cpus: 4, include_dashboard: true}   # only when the sweep starts Ray itself

One place per rule: the config loader (:mod:`cadc_ray.config`) checks every type, the
spec's own sections (:class:`SpecFile` and the dataclasses in it, built by ``from_dict``)
as well as every experiment value (``field_type`` / ``coerce_value`` for a dotted key,
``from_dict`` for the base config, ``replace_dotted`` and ``validate`` for every trial
config). This module holds the sweep's own rules only. Distributions come from the closed
table :data:`DISTRIBUTIONS`. Errors are :class:`~cadc_ray.config.ConfigError` naming the
file and the path.
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

from cadc_ray.config import (
    ConfigError,
    ExperimentConfig,
    UseGpu,
    absolute_paths,
    apply_overrides,
    coerce,
    coerce_value,
    field_type,
    file_key,
    from_dict,
    local_path,
    merge_mappings,
    parse_override,
    read_yaml_mapping,
    to_dict,
)
from cadc_ray.storage import is_uri
from cadc_ray.sweep.space import candidate_points, resolve_trial_config, trial_configs_for_setup
from cadc_ray.sweep.summary import SUMMARY_METRICS, TEST_PREFIX, VAL_PREFIX

DistributionName = Literal["choice", "grid", "uniform", "loguniform", "int", "logint"]
SearcherName = Literal["grid", "optuna"]
SamplerName = Literal["tpe", "random"]
EarlyStoppingName = Literal["none", "asha"]
Mode = Literal["max", "min"]

MAX_ENUMERATED_VALUES = 64
"""A distribution on a pretraining key must be enumerable into at most this many values."""

STORAGE_URI_SCHEMES = frozenset({"s3", "gs", "gcs", "hdfs", "abfs", "abfss", "file"})
"""URI schemes ``storage_path`` accepts (pyarrow filesystems Tune/Train can write to)."""

RDB_SCHEMES = frozenset({"sqlite", "postgresql", "mysql"})
"""URL schemes ``searcher.storage`` accepts (SQLAlchemy dialects, ``+driver`` allowed)."""

MAX_VALIDATED_CORNERS = 4096
"""Cap on the configs checked eagerly for an Optuna space (discrete values x bounds)."""


# ---------------------------------------------------------------------------------------
# Distributions: the fields each one accepts ("type" aside), typed for the config loader


@dataclass(frozen=True)
class ChoiceFields:
    """``choice`` / ``grid``: each value is checked against the type of the dotted key."""

    values: tuple[Any, ...]


@dataclass(frozen=True)
class LogRangeFields:
    """``loguniform``."""

    low: float
    high: float


@dataclass(frozen=True)
class RangeFields(LogRangeFields):
    """``uniform``."""

    step: float | None = None


@dataclass(frozen=True)
class LogIntRangeFields:
    """``logint``."""

    low: int
    high: int


@dataclass(frozen=True)
class IntRangeFields(LogIntRangeFields):
    """``int`` (inclusive)."""

    step: int | None = None


DISTRIBUTIONS: dict[DistributionName, type] = {
    "choice": ChoiceFields,
    "grid": ChoiceFields,
    "uniform": RangeFields,
    "loguniform": LogRangeFields,
    "int": IntRangeFields,
    "logint": LogIntRangeFields,
}
"""Closed table of distributions: name -> the dataclass of the fields it accepts."""

INTEGER_DISTRIBUTIONS = frozenset({"int", "logint"})
LOG_DISTRIBUTIONS = frozenset({"loguniform", "logint"})


@dataclass(frozen=True)
class Distribution:
    """One search dimension. ``values`` for choice/grid, ``low``/``high``/``step`` otherwise."""

    kind: DistributionName
    values: tuple[Any, ...] = ()
    low: float | None = None
    high: float | None = None
    step: float | None = None

    def finite_values(self) -> tuple[Any, ...] | None:
        """Every value the distribution can produce, or None when there are too many/infinitely many."""
        if self.kind in ("choice", "grid"):
            return self.values
        if self.low is None or self.high is None:
            return None
        if self.low == self.high:
            return (int(self.low) if self.kind in INTEGER_DISTRIBUTIONS else self.low,)
        if self.kind in INTEGER_DISTRIBUTIONS:
            step = int(self.step or 1) if self.kind == "int" else 1
            count = (int(self.high) - int(self.low)) // step + 1
            if count > MAX_ENUMERATED_VALUES:
                return None
            return tuple(range(int(self.low), int(self.high) + 1, step))
        if self.kind == "uniform" and self.step is not None:
            count = math.floor((self.high - self.low) / self.step + 1e-9) + 1
            if count > MAX_ENUMERATED_VALUES:
                return None
            return tuple(self.low + index * self.step for index in range(count))
        return None

    def bounds(self) -> tuple[Any, ...]:
        """Values worth validating eagerly: all finite values, else the two bounds."""
        finite = self.finite_values()
        if finite is not None:
            return finite
        assert self.low is not None and self.high is not None
        if self.kind in INTEGER_DISTRIBUTIONS:
            return (int(self.low), int(self.high))
        return (self.low, self.high)


# ---------------------------------------------------------------------------------------
# The spec's own sections


@dataclass(frozen=True)
class Objective:
    metric: str
    mode: Mode = "max"


DEFAULT_OBJECTIVES = (Objective("val_hr@10", "max"),)


@dataclass(frozen=True)
class SearcherSpec:
    """How trials are chosen; ``storage`` only for Optuna.

    ``storage``: where the Optuna study lives. None: a journal file in the sweep's output
    folder (:data:`cadc_ray.sweep.driver.STUDY_FILE`); a ``sqlite:///``, ``postgresql://``
    or ``mysql://`` URL: that RDB (on clusters). ``--resume`` continues the same study.
    """

    kind: SearcherName = field(default="optuna", metadata=file_key("type"))
    sampler: SamplerName = "tpe"
    seed: int = 0
    storage: str | None = None


@dataclass(frozen=True)
class EarlyStoppingSpec:
    """ASHA over per-epoch validation reports (worker groups and local mode both report)."""

    kind: EarlyStoppingName = field(default="none", metadata=file_key("type"))
    metric: str = "val_hr@10"
    mode: Mode = "max"
    grace_period: int = 2
    reduction_factor: float = 3.0
    max_t: int | None = None  # None: train.epochs of the base config


@dataclass(frozen=True)
class TrialResources:
    """Per-trial resources; None keeps the base config's ``resources.*`` value."""

    num_workers: int | None = None
    cpus_per_worker: int | None = None
    use_gpu: UseGpu | None = None
    torch_threads: int | None = None


@dataclass(frozen=True)
class RaySpec:
    """``ray.init`` arguments, used only when the sweep starts Ray itself (no RAY_ADDRESS)."""

    address: str | None = None
    num_cpus: int | None = None
    include_dashboard: bool = True
    object_store_memory_mb: int | None = None


@dataclass(frozen=True)
class SpecFile:
    """The top level of a spec file as written; the config loader checks every key and type.

    A section left out or null takes its default. ``Any`` and the experiment mappings are
    checked in :func:`parse_spec`, which resolves this into a :class:`SweepSpec`.
    """

    name: str
    base: str | None = None
    base_config: dict[str, Any] | None = None
    overrides: dict[str, Any] | None = None
    space: dict[str, Any] | None = None
    extra_trials: tuple[dict[str, Any], ...] | None = None
    searcher: SearcherSpec | None = None
    objectives: tuple[Objective, ...] | None = None
    num_samples: int = 1
    max_concurrent_trials: int = 1
    trial_resources: TrialResources | None = None
    early_stopping: EarlyStoppingSpec | None = None
    output_dir: str | None = None
    storage_path: Any = None  # a URI or a path (its own messages: _storage_path)
    ray: RaySpec | None = None
    study_per: str | None = None
    final_seeds: Any = None  # a list of seeds (its own messages: _seeds)


# --set keys whose first segment is one of these go to the spec; the rest are experiment keys.
SPEC_SET_ROOTS = frozenset(f.name for f in dataclasses.fields(SpecFile)) - {
    "base_config",
    "overrides",
    "space",
    "extra_trials",
    "base",
}


@dataclass(frozen=True)
class SweepSpec:
    name: str
    source: str  # the spec file (or "<dict>"), named in errors
    base_config: ExperimentConfig
    space: tuple[tuple[str, Distribution], ...]  # ordered: method first when present
    extra_trials: tuple[tuple[tuple[str, Any], ...], ...] = ()
    searcher: SearcherSpec = field(default_factory=SearcherSpec)
    objectives: tuple[Objective, ...] = DEFAULT_OBJECTIVES
    num_samples: int = 1
    max_concurrent_trials: int = 1
    early_stopping: EarlyStoppingSpec = field(default_factory=EarlyStoppingSpec)
    output_dir: Path = Path("runs/sweeps/sweep")
    # Root of Tune's experiment and the Train runs: a URI (s3://..., gs://...) or a
    # local/NFS path; None keeps them in output_dir. The sweep adds "/<name>" to it.
    storage_path: str | None = None
    ray: RaySpec = field(default_factory=RaySpec)
    # Optuna only: a `grid` dimension (e.g. method) with one study of num_samples trials
    # per value, then each study's best config re-run at every seed of final_seeds
    # (cadc_ray.sweep.tuned: the same budget for every method, then repeats).
    study_per: str | None = None
    final_seeds: tuple[int, ...] = ()

    @property
    def space_dict(self) -> dict[str, Distribution]:
        return dict(self.space)

    def to_plain(self) -> dict[str, Any]:
        """A YAML/JSON-serializable description (written next to the results)."""
        return {
            "name": self.name,
            "source": self.source,
            "base_config": to_dict(self.base_config),
            "space": {
                key: {
                    k: (list(v) if isinstance(v, tuple) else v)
                    for k, v in dataclasses.asdict(dist).items()
                    if v not in (None, ())
                }
                for key, dist in self.space
            },
            "extra_trials": [dict(point) for point in self.extra_trials],
            "searcher": dataclasses.asdict(self.searcher),
            "objectives": [dataclasses.asdict(o) for o in self.objectives],
            "num_samples": self.num_samples,
            "max_concurrent_trials": self.max_concurrent_trials,
            "early_stopping": dataclasses.asdict(self.early_stopping),
            "output_dir": str(self.output_dir),
            "storage_path": self.storage_path,
            "ray": dataclasses.asdict(self.ray),
            "study_per": self.study_per,
            "final_seeds": list(self.final_seeds),
        }


def known_metrics(config: ExperimentConfig) -> tuple[str, ...]:
    """Metric names a finished trial reports: ``{val,test}_{hr,ndcg}@k`` + SUMMARY_METRICS."""
    quality = [
        f"{split}{name}@{k}"
        for split in (VAL_PREFIX, TEST_PREFIX)
        for name in ("hr", "ndcg")
        for k in config.eval.ks
    ]
    return (*quality, *SUMMARY_METRICS)


# ---------------------------------------------------------------------------------------
# Loading


def load_spec(path: str | os.PathLike[str], sets: Sequence[str] = ()) -> SweepSpec:
    """Reads and validates a sweep spec; ``sets`` are ``--set KEY=VALUE`` strings.

    A ``--set`` whose first segment is a spec key (``output_dir``, ``num_samples``,
    ``searcher.seed``, ...) changes the spec; any other is a dotted experiment key added to
    ``overrides`` (e.g. ``data.path=/data/ml-1m``, ``train.epochs=3``).
    """
    file = Path(path)
    raw = read_yaml_mapping(file)
    spec_sets: list[tuple[str, Any]] = []
    experiment_sets: dict[str, Any] = {}
    for text in sets:
        key, value = parse_override(text)
        if key.split(".")[0] in SPEC_SET_ROOTS:
            spec_sets.append((key, value))
        else:
            experiment_sets[key] = value
    if spec_sets:
        raw = apply_overrides(raw, spec_sets)
    overrides = raw.get("overrides") or {}
    if experiment_sets and isinstance(overrides, Mapping):  # else parse_spec names the problem
        raw = {**raw, "overrides": {**overrides, **experiment_sets}}
    source = str(file) + (" with --set " + ", ".join(sets) if sets else "")
    return parse_spec(raw, source, base_dir=file.parent)


def parse_spec(
    raw: Mapping[str, Any], source: str = "<dict>", *, base_dir: Path | None = None
) -> SweepSpec:
    """Builds a :class:`SweepSpec` from a mapping; ``base_dir`` resolves ``base:`` paths.

    Every trial config the spec can produce is resolved and validated eagerly: every grid
    point, or every discrete combination and bound of an Optuna space
    (:func:`cadc_ray.sweep.space.resolve_trial_config`, i.e. ``replace_dotted``).
    """
    if isinstance(raw, Mapping) and isinstance(raw.get("objectives"), Mapping):
        raw = {**raw, "objectives": [raw["objectives"]]}  # one objective may stand alone
    file = from_dict(SpecFile, raw, source)
    try:
        spec = _resolve(file, source, base_dir)
        _check_sweep_rules(spec)
        _validate_trial_configs(spec)
    except ConfigError as error:
        raise ConfigError(f"{source}: {error}") from None
    # Pretraining and sample dimensions must be enumerable: both are computed before the
    # trials (errors name spec.source).
    trial_configs_for_setup(spec)
    return spec


def _fail(path: str, message: str) -> typing.NoReturn:
    raise ConfigError(f"{path}: {message}")


def _resolve(file: SpecFile, source: str, base_dir: Path | None) -> SweepSpec:
    """The spec from its typed file form, with each section's own rules checked."""
    name = file.name
    if not name or "/" in name or name.startswith("."):
        _fail("name", f"expected a non-empty folder-safe name, got {name!r}")
    objectives = file.objectives if file.objectives is not None else DEFAULT_OBJECTIVES
    if not objectives:
        _fail("objectives", "expected a non-empty list of {metric, mode}, got []")
    metrics = [o.metric for o in objectives]
    if len(set(metrics)) != len(metrics):
        _fail("objectives", f"metrics repeat: {metrics}")
    for path, count in (
        ("num_samples", file.num_samples),
        ("max_concurrent_trials", file.max_concurrent_trials),
    ):
        if count < 1:
            _fail(path, f"must be >= 1, got {count}")
    output_dir = file.output_dir if file.output_dir is not None else f"runs/sweeps/{name}"
    if not output_dir:
        _fail("output_dir", f"expected a path, got {output_dir!r}")
    return SweepSpec(
        name=name,
        source=source,
        base_config=_base_config(file, base_dir),
        space=_space(file.space),
        extra_trials=tuple(
            _dotted_values(point, f"extra_trials[{index}]")
            for index, point in enumerate(file.extra_trials or ())
        ),
        searcher=file.searcher or SearcherSpec(),
        objectives=objectives,
        num_samples=file.num_samples,
        max_concurrent_trials=file.max_concurrent_trials,
        early_stopping=file.early_stopping or EarlyStoppingSpec(),
        output_dir=Path(local_path(output_dir)),
        storage_path=_storage_path(file.storage_path),
        ray=file.ray or RaySpec(),
        study_per=file.study_per,
        final_seeds=_seeds(file.final_seeds),
    )


def _base_config(file: SpecFile, base_dir: Path | None) -> ExperimentConfig:
    """The base experiment config: file, then inline mapping, then dotted overrides, then
    trial resources; relative paths in it made absolute (trials run elsewhere)."""
    raw: dict[str, Any] = {}
    if file.base is not None:
        # Relative to the spec file (an include), made absolute here.
        base_path = Path(local_path(file.base, base_dir))
        if not base_path.is_file():
            _fail("base", f"experiment config {base_path} not found")
        raw = read_yaml_mapping(base_path)
    if file.base_config is not None:
        raw = merge_mappings(raw, file.base_config)
    overrides = _dotted_values(file.overrides or {}, "overrides")
    resources = file.trial_resources or TrialResources()
    resource_overrides = [
        (f"resources.{f.name}", getattr(resources, f.name))
        for f in dataclasses.fields(TrialResources)
        if getattr(resources, f.name) is not None
    ]
    raw = apply_overrides(raw, [*overrides, *resource_overrides])
    return absolute_paths(from_dict(ExperimentConfig, raw, "base_config"))


def _dotted_values(values: Mapping[str, Any], path: str) -> tuple[tuple[str, Any], ...]:
    """Dotted experiment keys -> values in the key's canonical form (``path.<key>: ...``)."""
    try:
        return tuple((dotted, coerce_value(dotted, value)) for dotted, value in values.items())
    except ConfigError as error:
        raise ConfigError(f"{path}.{error}") from None


def _space(raw: Mapping[str, Any] | None) -> tuple[tuple[str, Distribution], ...]:
    if not raw:
        _fail("space", "empty search space: give at least one dimension")
    parsed = [(dotted, _distribution(dotted, entry)) for dotted, entry in raw.items()]
    if "model.embedding_dim" in raw and "pretrain.embedding_dim" in raw:
        _fail(
            "space.pretrain.embedding_dim",
            "coupled to model.embedding_dim (pretrained rows are pretrain.embedding_dim + 1 wide): "
            "search one of them only",
        )
    # The method decides which other keys matter, so it is suggested first.
    parsed.sort(key=lambda item: item[0] != "method")
    return tuple(parsed)


def _distribution(dotted: str, raw: Any) -> Distribution:
    """One ``space`` entry: its fields typed by :data:`DISTRIBUTIONS`, its values by the key."""
    path = f"space.{dotted}"
    try:
        annotation = field_type(dotted)
    except ConfigError as error:
        raise ConfigError(f"space: {error}") from None
    if not isinstance(raw, Mapping):
        _fail(path, f"expected a mapping, got {raw!r}")
    if "type" not in raw:
        _fail(path, f"missing 'type' (one of {sorted(DISTRIBUTIONS)})")
    kind = raw["type"]
    if kind not in DISTRIBUTIONS:
        _fail(f"{path}.type", f"unknown distribution {kind!r} (known: {sorted(DISTRIBUTIONS)})")
    fields = coerce({k: v for k, v in raw.items() if k != "type"}, DISTRIBUTIONS[kind], path)

    if isinstance(fields, ChoiceFields):
        if not fields.values:
            _fail(f"{path}.values", "expected a non-empty list, got []")
        values = tuple(
            coerce_value(dotted, value, f"{path}.values[{index}]")
            for index, value in enumerate(fields.values)
        )
        if len(set(map(repr, values))) != len(values):
            _fail(f"{path}.values", f"values repeat: {list(fields.values)!r}")
        return Distribution(kind, values=values)

    integer = kind in INTEGER_DISTRIBUTIONS
    if not _is_numeric(annotation, int if integer else float):
        wanted = "an integer" if integer else "a float"
        _fail(path, f"distribution {kind!r} needs {wanted} key; {dotted} is {annotation}")
    low, high, step = fields.low, fields.high, getattr(fields, "step", None)
    if low > high:
        _fail(path, f"empty range: low {low!r} > high {high!r}")
    if kind in LOG_DISTRIBUTIONS and low <= 0:
        _fail(f"{path}.low", f"a log distribution needs low > 0, got {low!r}")
    if step is not None and step <= 0:
        _fail(f"{path}.step", f"must be > 0, got {step!r}")
    return Distribution(
        kind, low=float(low), high=float(high), step=None if step is None else float(step)
    )


def _is_numeric(annotation: Any, numeric: type) -> bool:
    """True when ``annotation`` is ``numeric`` or ``numeric | None``."""
    if get_origin(annotation) in (Union, types.UnionType):
        return set(get_args(annotation)) == {numeric, type(None)}
    return annotation is numeric


def _storage_path(raw: Any) -> str | None:
    """None, a URI with a scheme from :data:`STORAGE_URI_SCHEMES`, or a local/NFS path."""
    if raw is None:
        return None
    if not isinstance(raw, str) or not raw.strip():
        _fail("storage_path", f"expected a URI or a path, got {raw!r}")
    expanded = os.path.expandvars(raw.strip())
    if not is_uri(expanded):
        return local_path(expanded)
    scheme, _, rest = expanded.partition("://")
    if scheme not in STORAGE_URI_SCHEMES:
        _fail(
            "storage_path",
            f"unsupported scheme {scheme!r} in {expanded!r} (known: {sorted(STORAGE_URI_SCHEMES)})",
        )
    if not rest.strip("/"):
        _fail("storage_path", f"{expanded!r} names no bucket or folder")
    return expanded.rstrip("/")


def _seeds(raw: Any) -> tuple[int, ...]:
    """``final_seeds``: distinct integers >= 0."""
    seeds = raw or []
    if not isinstance(seeds, list) or not all(
        isinstance(seed, int) and not isinstance(seed, bool) and seed >= 0 for seed in seeds
    ):
        _fail("final_seeds", f"expected a list of integers >= 0, got {raw!r}")
    if len(set(seeds)) != len(seeds):
        _fail("final_seeds", f"seeds repeat: {seeds!r}")
    return tuple(seeds)


def _check_sweep_rules(spec: SweepSpec) -> None:
    """Rules across sections: metrics vs the base config, searcher vs space, studies."""
    metrics = known_metrics(spec.base_config)
    for index, objective in enumerate(spec.objectives):
        path = f"objectives[{index}].metric"
        if objective.metric not in metrics:
            _fail(path, f"unknown metric {objective.metric!r} (known: {list(metrics)})")
        if objective.metric.startswith(TEST_PREFIX):
            # Objectives choose configurations (Optuna's feedback, best_config.yaml): doing
            # so on the test split would leak it into model selection.
            validation = VAL_PREFIX + objective.metric.removeprefix(TEST_PREFIX)
            _fail(
                path,
                f"{objective.metric!r} is a test metric: configurations are selected on "
                f"validation only (use {validation!r}); test metrics are still reported for "
                "every trial",
            )

    searcher = spec.searcher
    if searcher.storage is not None:
        if searcher.kind != "optuna":
            _fail("searcher.storage", "only used with searcher 'optuna'")
        if searcher.storage.partition("://")[0].split("+")[0] not in RDB_SCHEMES:
            _fail(
                "searcher.storage",
                f"expected an RDB URL ({', '.join(sorted(RDB_SCHEMES))}://...), got "
                f"{searcher.storage!r}; leave it out for a journal file in output_dir",
            )
    # Studies first: a study_per naming no dimension explains a stray 'grid' better.
    _check_studies(spec)
    if searcher.kind == "grid":
        for key, dist in spec.space:
            if dist.kind != "grid":
                _fail(f"space.{key}", f"searcher 'grid' needs 'grid' dimensions, got {dist.kind!r}")
        if spec.num_samples != 1:
            _fail(
                "num_samples",
                "must be 1 with searcher 'grid' (repeat by putting `seed` in the grid)",
            )
    else:
        for key, dist in spec.space:
            if dist.kind == "grid" and key != spec.study_per:
                _fail(
                    f"space.{key}",
                    "'grid' needs searcher 'grid' (Optuna samples; use 'choice' for categorical "
                    "dimensions)",
                )
        if spec.extra_trials:
            _fail("extra_trials", "only supported with searcher 'grid'")

    stopping = spec.early_stopping
    if stopping.kind == "asha":
        if stopping.metric not in metrics or not stopping.metric.startswith(VAL_PREFIX):
            _fail(
                "early_stopping.metric",
                "ASHA needs a per-epoch validation metric val_hr@k or val_ndcg@k, got "
                f"{stopping.metric!r}",
            )
        if stopping.grace_period < 1:
            _fail("early_stopping.grace_period", f"must be >= 1, got {stopping.grace_period}")
        if stopping.reduction_factor <= 1:
            _fail(
                "early_stopping.reduction_factor", f"must be > 1, got {stopping.reduction_factor}"
            )


def _check_studies(spec: SweepSpec) -> None:
    """``study_per``: a grid dimension of an Optuna spec, besides at least one other."""
    if spec.study_per is None:
        if spec.final_seeds:
            _fail("final_seeds", "needs study_per (the seeds repeat each study's best)")
        return
    dims = spec.space_dict
    if spec.searcher.kind != "optuna":
        _fail("study_per", "needs searcher 'optuna' (one Optuna study per value)")
    if spec.study_per not in dims:
        _fail("study_per", f"expected a dimension of the space, got {spec.study_per!r}")
    if dims[spec.study_per].kind != "grid":
        _fail(f"space.{spec.study_per}", "the study_per dimension must be a 'grid'")
    if len(dims) < 2:
        _fail("space", "study_per needs at least one dimension to search besides it")


def _validate_trial_configs(spec: SweepSpec) -> None:
    """Resolves the configs a sweep can produce; the config loader validates each one.

    Grid: every trial. Optuna: every combination of discrete values and range bounds (capped).
    """
    for label, point in candidate_points(spec, limit=MAX_VALIDATED_CORNERS):
        try:
            resolve_trial_config(spec.base_config, point)
        except ConfigError as error:
            message = str(error).removeprefix("<override>: ")
            raise ConfigError(f"{label}: trial config {point} is invalid: {message}") from None
