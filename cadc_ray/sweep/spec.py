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

Distributions come from the closed table :data:`DISTRIBUTIONS`; every dotted key must
exist in :class:`~cadc_ray.config.ExperimentConfig` and every value must have the key's
type. Errors are :class:`~cadc_ray.config.ConfigError` naming the file and the path.
"""

from __future__ import annotations

import dataclasses
import math
import os
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

import yaml

from cadc_ray.config import (
    ConfigError,
    ExperimentConfig,
    absolute_paths,
    apply_overrides,
    from_dict,
    local_path,
    parse_override,
    read_yaml_mapping,
    to_dict,
    validate,
)
from cadc_ray.storage import is_uri

DistributionName = Literal["choice", "grid", "uniform", "loguniform", "int", "logint"]
SearcherName = Literal["grid", "optuna"]
SamplerName = Literal["tpe", "random"]
EarlyStoppingName = Literal["none", "asha"]
Mode = Literal["max", "min"]

# The fields each distribution accepts ("type" aside), and which of them are required.
DISTRIBUTIONS: dict[DistributionName, tuple[frozenset[str], frozenset[str]]] = {
    "choice": (frozenset({"values"}), frozenset({"values"})),
    "grid": (frozenset({"values"}), frozenset({"values"})),
    "uniform": (frozenset({"low", "high", "step"}), frozenset({"low", "high"})),
    "loguniform": (frozenset({"low", "high"}), frozenset({"low", "high"})),
    "int": (frozenset({"low", "high", "step"}), frozenset({"low", "high"})),
    "logint": (frozenset({"low", "high"}), frozenset({"low", "high"})),
}
"""Closed table of distributions: name -> (allowed fields, required fields)."""

SUMMARY_METRICS: tuple[str, ...] = (
    "pretrain_seconds",
    "train_seconds",
    "total_seconds",
    "trainable_parameters",
    "frozen_parameters",
    "best_epoch",
    "epochs_run",
    "model_bytes",
    "id_table_compression",
)
"""Scalar metrics every finished trial reports (besides ``val_`` and ``test_`` quality)."""

TEACHER_TEST_PREFIX = "teacher_test_"
"""Prefix of the teacher-alone test metrics a pretraining trial reports (``teacher_test_hr@10``;
absent for ``mf_mlp``, whose tables cannot score); Figure 1 draws them as reference lines."""

MAX_ENUMERATED_VALUES = 64
"""A distribution on a pretraining key must be enumerable into at most this many values."""

STORAGE_URI_SCHEMES = frozenset({"s3", "gs", "gcs", "hdfs", "abfs", "abfss", "file"})
"""URI schemes ``storage_path`` accepts (pyarrow filesystems Tune/Train can write to)."""

RDB_SCHEMES = frozenset({"sqlite", "postgresql", "mysql"})
"""URL schemes ``searcher.storage`` accepts (SQLAlchemy dialects, ``+driver`` allowed)."""

TEST_PREFIX = "test_"
VAL_PREFIX = "val_"

MAX_VALIDATED_CORNERS = 4096
"""Cap on the configs checked eagerly for an Optuna space (discrete values x bounds)."""

SPEC_KEYS = frozenset(
    {
        "name",
        "base",
        "base_config",
        "overrides",
        "space",
        "extra_trials",
        "searcher",
        "objectives",
        "num_samples",
        "max_concurrent_trials",
        "trial_resources",
        "early_stopping",
        "output_dir",
        "storage_path",
        "ray",
        "study_per",
        "final_seeds",
    }
)
# --set keys whose first segment is one of these go to the spec; the rest are experiment keys.
SPEC_SET_ROOTS = SPEC_KEYS - {"base_config", "overrides", "space", "extra_trials", "base"}


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
            return (int(self.low) if self.kind in ("int", "logint") else self.low,)
        if self.kind in ("int", "logint"):
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
        if self.kind in ("int", "logint"):
            return (int(self.low), int(self.high))
        return (self.low, self.high)


@dataclass(frozen=True)
class Objective:
    metric: str
    mode: Mode


@dataclass(frozen=True)
class SearcherSpec:
    """How trials are chosen; ``storage`` only for Optuna.

    ``storage``: where the Optuna study lives. None: a journal file in the sweep's output
    folder (:data:`cadc_ray.sweep.driver.STUDY_FILE`); a ``sqlite:///``, ``postgresql://``
    or ``mysql://`` URL: that RDB (on clusters). ``--resume`` continues the same study.
    """

    kind: SearcherName = "optuna"
    sampler: SamplerName = "tpe"
    seed: int = 0
    storage: str | None = None


@dataclass(frozen=True)
class EarlyStoppingSpec:
    """ASHA over per-epoch validation reports (worker groups and local mode both report)."""

    kind: EarlyStoppingName = "none"
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
    use_gpu: Literal["auto", "yes", "no"] | None = None
    torch_threads: int | None = None


@dataclass(frozen=True)
class RaySpec:
    """``ray.init`` arguments, used only when the sweep starts Ray itself (no RAY_ADDRESS)."""

    address: str | None = None
    num_cpus: int | None = None
    include_dashboard: bool = True
    object_store_memory_mb: int | None = None


@dataclass(frozen=True)
class SweepSpec:
    name: str
    source: str  # the spec file (or "<dict>"), named in errors
    base_config: ExperimentConfig
    space: tuple[tuple[str, Distribution], ...]  # ordered: method first when present
    extra_trials: tuple[tuple[tuple[str, Any], ...], ...] = ()
    searcher: SearcherSpec = field(default_factory=SearcherSpec)
    objectives: tuple[Objective, ...] = (Objective("val_hr@10", "max"),)
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


# ---------------------------------------------------------------------------------------
# Dotted experiment keys


def field_annotation(dotted: str) -> Any:
    """The type annotation of ``dotted`` in ExperimentConfig; ConfigError if it is no leaf."""
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


def _is_numeric_annotation(tp: Any, numeric: type) -> bool:
    """True when ``tp`` is ``numeric`` or ``numeric | None``."""
    if tp is numeric:
        return True
    if get_origin(tp) in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return numeric in get_args(tp)
    return False


def check_value(dotted: str, value: Any) -> Any:
    """Checks ``value`` against the type of ``dotted``; returns its canonical form.

    Builds a default config with that one key set (no cross-field checks), so the rules
    are exactly the experiment config's own. Errors read ``"<dotted>: <problem>"``.
    """
    field_annotation(dotted)
    marker = "<value>"
    try:
        config = from_dict(ExperimentConfig, apply_overrides({}, {dotted: value}), marker)
    except ConfigError as error:
        raise ConfigError(str(error).removeprefix(f"{marker}: ")) from None
    return get_dotted(config, dotted)


def get_dotted(config: ExperimentConfig, dotted: str) -> Any:
    node: Any = config
    for part in dotted.split("."):
        node = getattr(node, part)
    return node


# ---------------------------------------------------------------------------------------
# Loading


def _fail(source: str, path: str, message: str) -> typing.NoReturn:
    raise ConfigError(f"{source}: {path}: {message}")


def _require_mapping(value: Any, source: str, path: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        _fail(source, path, f"expected a mapping, got {value!r}")
    for key in value:
        if not isinstance(key, str):
            _fail(source, path, f"keys must be strings, got {key!r}")
    return value


def _check_known(
    raw: Mapping[str, Any], known: frozenset[str] | set[str], source: str, path: str
) -> None:
    for key in raw:
        if key not in known:
            where = f"{path}.{key}" if path else key
            _fail(source, where, f"unknown key (known: {sorted(known)})")


def _number(value: Any, source: str, path: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        _fail(source, path, f"expected a number, got {value!r}")
    return float(value)


def _positive_int(value: Any, source: str, path: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        _fail(source, path, f"expected an integer >= {minimum}, got {value!r}")
    return value


def _literal(value: Any, allowed: Sequence[str], source: str, path: str) -> Any:
    if value not in allowed:
        _fail(source, path, f"{value!r} is not one of {list(allowed)}")
    return value


def _parse_distribution(dotted: str, raw: Any, source: str) -> Distribution:
    path = f"space.{dotted}"
    try:
        annotation = field_annotation(dotted)
    except ConfigError as error:
        raise ConfigError(f"{source}: space: {error}") from None
    entry = _require_mapping(raw, source, path)
    if "type" not in entry:
        _fail(source, path, f"missing 'type' (one of {sorted(DISTRIBUTIONS)})")
    kind = entry["type"]
    if kind not in DISTRIBUTIONS:
        _fail(
            source,
            f"{path}.type",
            f"unknown distribution {kind!r} (known: {sorted(DISTRIBUTIONS)})",
        )
    allowed, required = DISTRIBUTIONS[kind]
    _check_known(entry, allowed | {"type"}, source, path)
    for name in sorted(required):
        if name not in entry:
            _fail(source, path, f"distribution {kind!r} needs {name!r}")

    def checked(value: Any, where: str) -> Any:
        try:
            return check_value(dotted, value)
        except ConfigError as error:
            problem = str(error).removeprefix(f"{dotted}: ")
            raise ConfigError(f"{source}: {where}: {problem}") from None

    if kind in ("choice", "grid"):
        values = entry["values"]
        if not isinstance(values, list) or not values:
            _fail(source, f"{path}.values", f"expected a non-empty list, got {values!r}")
        canonical = tuple(checked(v, f"{path}.values[{i}]") for i, v in enumerate(values))
        if len(set(map(repr, canonical))) != len(canonical):
            _fail(source, f"{path}.values", f"values repeat: {values!r}")
        return Distribution(kind, values=canonical)

    integer = kind in ("int", "logint")
    if integer and not _is_numeric_annotation(annotation, int):
        _fail(source, path, f"distribution {kind!r} needs an integer key; {dotted} is {annotation}")
    if not integer and not _is_numeric_annotation(annotation, float):
        _fail(source, path, f"distribution {kind!r} needs a float key; {dotted} is {annotation}")
    low = _number(entry["low"], source, f"{path}.low")
    high = _number(entry["high"], source, f"{path}.high")
    step = _number(entry["step"], source, f"{path}.step") if "step" in entry else None
    if integer:
        for name, value in (
            ("low", entry["low"]),
            ("high", entry["high"]),
            ("step", entry.get("step", 1)),
        ):
            if isinstance(value, bool) or not isinstance(value, int):
                _fail(source, f"{path}.{name}", f"expected an integer, got {value!r}")
    if low > high:
        _fail(source, path, f"empty range: low {entry['low']!r} > high {entry['high']!r}")
    if kind in ("loguniform", "logint") and low <= 0:
        _fail(source, f"{path}.low", f"a log distribution needs low > 0, got {entry['low']!r}")
    if step is not None and step <= 0:
        _fail(source, f"{path}.step", f"must be > 0, got {entry['step']!r}")
    # Both bounds must be legal values for the key (e.g. filter_ratio >= 1 is cross-checked later).
    checked(int(low) if integer else low, f"{path}.low")
    checked(int(high) if integer else high, f"{path}.high")
    return Distribution(kind, low=low, high=high, step=step)


def _parse_space(raw: Any, source: str) -> tuple[tuple[str, Distribution], ...]:
    if raw is None:
        _fail(source, "space", "empty search space: give at least one dimension")
    mapping = _require_mapping(raw, source, "space")
    if not mapping:
        _fail(source, "space", "empty search space: give at least one dimension")
    parsed = [(key, _parse_distribution(key, value, source)) for key, value in mapping.items()]
    keys = {key for key, _ in parsed}
    if "model.embedding_dim" in keys and "pretrain.embedding_dim" in keys:
        _fail(
            source,
            "space.pretrain.embedding_dim",
            "coupled to model.embedding_dim (pretrained rows are pretrain.embedding_dim + 1 wide): "
            "search one of them only",
        )
    # The method decides which other keys matter, so it is suggested first.
    parsed.sort(key=lambda item: item[0] != "method")
    return tuple(parsed)


def _parse_dotted_values(raw: Any, source: str, path: str) -> tuple[tuple[str, Any], ...]:
    mapping = _require_mapping(raw, source, path)
    result = []
    for dotted, value in mapping.items():
        try:
            canonical = check_value(dotted, value)
        except ConfigError as error:
            raise ConfigError(f"{source}: {path}.{error}") from None
        result.append((dotted, canonical))
    return tuple(result)


def _parse_dataclass(cls: type[Any], raw: Any, source: str, path: str) -> Any:
    if raw is None:
        return cls()
    mapping = _require_mapping(raw, source, path)
    renamed = {"kind" if key == "type" else key: value for key, value in mapping.items()}
    known = {f.name for f in dataclasses.fields(cls)}
    display = {"type" if name == "kind" else name for name in known}
    _check_known(mapping, display, source, path)
    try:
        return from_dict(cls, renamed, f"{source}: {path}")
    except ConfigError as error:
        raise ConfigError(str(error).replace(": kind:", ": type:")) from None


def _parse_objectives(raw: Any, source: str) -> tuple[Objective, ...]:
    if raw is None:
        return (Objective("val_hr@10", "max"),)
    if isinstance(raw, Mapping):
        raw = [raw]
    if not isinstance(raw, list) or not raw:
        _fail(source, "objectives", f"expected a non-empty list of {{metric, mode}}, got {raw!r}")
    result = []
    for index, item in enumerate(raw):
        path = f"objectives[{index}]"
        entry = _require_mapping(item, source, path)
        _check_known(entry, {"metric", "mode"}, source, path)
        if "metric" not in entry or not isinstance(entry["metric"], str):
            _fail(source, f"{path}.metric", f"expected a metric name, got {entry.get('metric')!r}")
        mode = _literal(entry.get("mode", "max"), get_args(Mode), source, f"{path}.mode")
        result.append(Objective(entry["metric"], mode))
    metrics = [o.metric for o in result]
    if len(set(metrics)) != len(metrics):
        _fail(source, "objectives", f"metrics repeat: {metrics}")
    return tuple(result)


def known_metrics(config: ExperimentConfig) -> tuple[str, ...]:
    """Metric names a finished trial reports: ``{val,test}_{hr,ndcg}@k`` + SUMMARY_METRICS."""
    quality = [
        f"{split}_{name}@{k}"
        for split in ("val", "test")
        for name in ("hr", "ndcg")
        for k in config.eval.ks
    ]
    return (*quality, *SUMMARY_METRICS)


def load_spec(
    path: str | os.PathLike[str],
    sets: Sequence[str] = (),
    *,
    resolve_config: Callable[[ExperimentConfig, Mapping[str, Any]], ExperimentConfig] | None = None,
) -> SweepSpec:
    """Reads and validates a sweep spec; ``sets`` are ``--set KEY=VALUE`` strings.

    A ``--set`` whose first segment is a spec key (``output_dir``, ``num_samples``,
    ``searcher.seed``, ...) changes the spec; any other is a dotted experiment key added to
    ``overrides`` (e.g. ``data.path=/data/ml-1m``, ``train.epochs=3``).
    """
    file = Path(path)
    raw = read_yaml_mapping(file)
    source = str(file)
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
    if experiment_sets:
        overrides = dict(_require_mapping(raw.get("overrides") or {}, source, "overrides"))
        overrides.update(experiment_sets)
        raw = {**raw, "overrides": overrides}
    if sets:
        source += " with --set " + ", ".join(sets)
    return parse_spec(raw, source, base_dir=file.parent, resolve_config=resolve_config)


def parse_spec(
    raw: Mapping[str, Any],
    source: str = "<dict>",
    *,
    base_dir: Path | None = None,
    resolve_config: Callable[[ExperimentConfig, Mapping[str, Any]], ExperimentConfig] | None = None,
) -> SweepSpec:
    """Builds a :class:`SweepSpec` from a mapping; ``base_dir`` resolves ``base:`` paths.

    ``resolve_config`` turns (base config, trial overrides) into a trial's config; it is
    used to validate every grid point (or every discrete combination and bound of an
    Optuna space) eagerly. The default is :func:`cadc_ray.sweep.space.resolve_trial_config`.
    """
    _require_mapping(raw, source, "<top>")
    _check_known(raw, SPEC_KEYS, source, "")
    name = raw.get("name")
    if not isinstance(name, str) or not name or "/" in name or name.startswith("."):
        _fail(source, "name", f"expected a non-empty folder-safe name, got {name!r}")

    # Base experiment config: file, then inline mapping, then dotted overrides, then resources.
    base_raw: dict[str, Any] = {}
    if raw.get("base") is not None:
        if not isinstance(raw["base"], str):
            _fail(source, "base", f"expected a path, got {raw['base']!r}")
        # Relative to the spec file (an include), made absolute here.
        base_path = Path(local_path(raw["base"], base_dir))
        if not base_path.is_file():
            _fail(source, "base", f"experiment config {base_path} not found")
        base_raw = read_yaml_mapping(base_path)
    if raw.get("base_config") is not None:
        inline = _require_mapping(raw["base_config"], source, "base_config")
        base_raw = _deep_merge(base_raw, inline)
    overrides = _parse_dotted_values(raw.get("overrides") or {}, source, "overrides")
    resources = _parse_dataclass(
        TrialResources, raw.get("trial_resources"), source, "trial_resources"
    )
    resource_overrides = [
        (f"resources.{f.name}", getattr(resources, f.name))
        for f in dataclasses.fields(TrialResources)
        if getattr(resources, f.name) is not None
    ]
    base_raw = apply_overrides(base_raw, [*overrides, *resource_overrides])
    # Relative experiment paths (output_root, data.path, ...) are relative to the working
    # directory of the command, made absolute now: trials run elsewhere.
    base_config = absolute_paths(from_dict(ExperimentConfig, base_raw, f"{source}: base_config"))

    space = _parse_space(raw.get("space"), source)
    searcher = _parse_dataclass(SearcherSpec, raw.get("searcher"), source, "searcher")
    extra_raw = raw.get("extra_trials") or []
    if not isinstance(extra_raw, list):
        _fail(source, "extra_trials", f"expected a list of mappings, got {extra_raw!r}")
    extra_trials = tuple(
        _parse_dotted_values(point, source, f"extra_trials[{index}]")
        for index, point in enumerate(extra_raw)
    )
    objectives = _parse_objectives(raw.get("objectives"), source)
    num_samples = _positive_int(raw.get("num_samples", 1), source, "num_samples")
    max_concurrent = _positive_int(
        raw.get("max_concurrent_trials", 1), source, "max_concurrent_trials"
    )
    early_stopping = _parse_dataclass(
        EarlyStoppingSpec, raw.get("early_stopping"), source, "early_stopping"
    )
    ray_spec = _parse_dataclass(RaySpec, raw.get("ray"), source, "ray")
    output_raw = raw.get("output_dir", f"runs/sweeps/{name}")
    if not isinstance(output_raw, str) or not output_raw:
        _fail(source, "output_dir", f"expected a path, got {output_raw!r}")
    storage_path = _parse_storage_path(raw.get("storage_path"), source)
    study_per, final_seeds = _parse_studies(raw, space, searcher, source)

    metrics = known_metrics(base_config)
    for index, objective in enumerate(objectives):
        if objective.metric not in metrics:
            _fail(
                source,
                f"objectives[{index}].metric",
                f"unknown metric {objective.metric!r} (known: {list(metrics)})",
            )
        if objective.metric.startswith(TEST_PREFIX):
            # Objectives choose configurations (Optuna's feedback, best_config.yaml): doing
            # so on the test split would leak it into model selection.
            _fail(
                source,
                f"objectives[{index}].metric",
                f"{objective.metric!r} is a test metric: configurations are selected on "
                f"validation only (use {VAL_PREFIX + objective.metric.removeprefix(TEST_PREFIX)!r}); "
                "test metrics are still reported for every trial",
            )
    if searcher.storage is not None:
        if searcher.kind != "optuna":
            _fail(source, "searcher.storage", "only used with searcher 'optuna'")
        if searcher.storage.partition("://")[0].split("+")[0] not in RDB_SCHEMES:
            _fail(
                source,
                "searcher.storage",
                f"expected an RDB URL ({', '.join(sorted(RDB_SCHEMES))}://...), got "
                f"{searcher.storage!r}; leave it out for a journal file in output_dir",
            )

    if searcher.kind == "grid":
        for key, dist in space:
            if dist.kind != "grid":
                _fail(
                    source,
                    f"space.{key}",
                    f"searcher 'grid' needs 'grid' dimensions, got {dist.kind!r}",
                )
        if num_samples != 1:
            _fail(
                source,
                "num_samples",
                "must be 1 with searcher 'grid' (repeat by putting `seed` in the grid)",
            )
    else:
        for key, dist in space:
            if dist.kind == "grid" and key != study_per:
                _fail(
                    source,
                    f"space.{key}",
                    "'grid' needs searcher 'grid' (Optuna samples; use 'choice' for categorical dimensions)",
                )
        if extra_trials:
            _fail(source, "extra_trials", "only supported with searcher 'grid'")

    if early_stopping.kind == "asha":
        if early_stopping.metric not in metrics or not early_stopping.metric.startswith("val_"):
            _fail(
                source,
                "early_stopping.metric",
                f"ASHA needs a per-epoch validation metric val_hr@k or val_ndcg@k, got {early_stopping.metric!r}",
            )
        _positive_int(early_stopping.grace_period, source, "early_stopping.grace_period")
        if early_stopping.reduction_factor <= 1:
            _fail(
                source,
                "early_stopping.reduction_factor",
                f"must be > 1, got {early_stopping.reduction_factor}",
            )

    spec = SweepSpec(
        name=name,
        source=source,
        base_config=base_config,
        space=space,
        extra_trials=extra_trials,
        searcher=searcher,
        objectives=objectives,
        num_samples=num_samples,
        max_concurrent_trials=max_concurrent,
        early_stopping=early_stopping,
        output_dir=Path(local_path(output_raw)),
        storage_path=storage_path,
        ray=ray_spec,
        study_per=study_per,
        final_seeds=final_seeds,
    )
    _validate_trial_configs(spec, resolve_config)
    return spec


def _parse_studies(
    raw: Mapping[str, Any],
    space: tuple[tuple[str, Distribution], ...],
    searcher: SearcherSpec,
    source: str,
) -> tuple[str | None, tuple[int, ...]]:
    """``study_per`` (a grid dimension of an Optuna spec) and ``final_seeds``."""
    study_per = raw.get("study_per")
    seeds_raw = raw.get("final_seeds") or []
    if study_per is None:
        if seeds_raw:
            _fail(source, "final_seeds", "needs study_per (the seeds repeat each study's best)")
        return None, ()
    dims = dict(space)
    if searcher.kind != "optuna":
        _fail(source, "study_per", "needs searcher 'optuna' (one Optuna study per value)")
    if not isinstance(study_per, str) or study_per not in dims:
        _fail(source, "study_per", f"expected a dimension of the space, got {study_per!r}")
    if dims[study_per].kind != "grid":
        _fail(source, f"space.{study_per}", "the study_per dimension must be a 'grid'")
    if len(dims) < 2:
        _fail(source, "space", "study_per needs at least one dimension to search besides it")
    if not isinstance(seeds_raw, list) or not all(
        isinstance(seed, int) and not isinstance(seed, bool) and seed >= 0 for seed in seeds_raw
    ):
        _fail(source, "final_seeds", f"expected a list of integers >= 0, got {seeds_raw!r}")
    if len(set(seeds_raw)) != len(seeds_raw):
        _fail(source, "final_seeds", f"seeds repeat: {seeds_raw!r}")
    return study_per, tuple(seeds_raw)


def _parse_storage_path(raw: Any, source: str) -> str | None:
    """None, a URI with a scheme from :data:`STORAGE_URI_SCHEMES`, or a local/NFS path."""
    if raw is None:
        return None
    if not isinstance(raw, str) or not raw.strip():
        _fail(source, "storage_path", f"expected a URI or a path, got {raw!r}")
    expanded = os.path.expandvars(raw.strip())
    if not is_uri(expanded):
        return local_path(expanded)
    scheme, _, rest = expanded.partition("://")
    if scheme not in STORAGE_URI_SCHEMES:
        _fail(
            source,
            "storage_path",
            f"unsupported scheme {scheme!r} in {expanded!r} (known: {sorted(STORAGE_URI_SCHEMES)})",
        )
    if not rest.strip("/"):
        _fail(source, "storage_path", f"{expanded!r} names no bucket or folder")
    return expanded.rstrip("/")


def _deep_merge(left: Mapping[str, Any], right: Mapping[str, Any]) -> dict[str, Any]:
    merged: dict[str, Any] = yaml.safe_load(yaml.safe_dump(dict(left))) or {}
    for key, value in right.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _validate_trial_configs(
    spec: SweepSpec,
    resolve_config: Callable[[ExperimentConfig, Mapping[str, Any]], ExperimentConfig] | None,
) -> None:
    """Resolves the configs a sweep can produce and runs the experiment's cross-field checks.

    Grid: every trial. Optuna: every combination of discrete values and range bounds (capped).
    """
    from cadc_ray.sweep.space import candidate_points, resolve_trial_config, trial_configs_for_setup

    resolve = resolve_config or resolve_trial_config
    for label, point in candidate_points(spec, limit=MAX_VALIDATED_CORNERS):
        try:
            config = resolve(spec.base_config, point)
            validate(config, "<trial>")
        except ConfigError as error:
            message = str(error).replace("<override>: ", "").replace("<trial>: ", "")
            raise ConfigError(
                f"{spec.source}: {label}: trial config {point} is invalid: {message}"
            ) from None
    # Pretraining dimensions must be enumerable (pretraining runs before the trials).
    trial_configs_for_setup(spec)
