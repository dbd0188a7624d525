"""From a spec's search space to trial configs: conditionals, coupling, grid points, Optuna.

Rules applied to every trial (grid or Optuna), so a trial config always passes
:func:`cadc_ray.config.validate`:

- ``model.integration`` and ``pretrain.*`` only matter for methods that pretrain; for the
  others they are dropped and the integration becomes ``auto`` (= ``none``). Optuna's
  define-by-run space does not even sample them then (the method is sampled first).
- ``data.filter_ratio`` / ``data.sample_seed`` do not matter for GS (all of D_full): GS gets
  ``filter_ratio = 1`` (which is what training on D_full means), so a ratio grid runs it once.
- ``model.embedding_dim`` and ``pretrain.embedding_dim`` are coupled for pretraining methods
  (pretrained rows carry a bias element: model = pretrain + 1); the space names one of them.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from cadc_ray.config import (
    ConfigError,
    ExperimentConfig,
    MethodName,
    replace_dotted,
    to_dict,
)
from cadc_ray.methods import METHODS, MethodSpec
from cadc_ray.pretrain_key import pretrain_key

# What this module reads of a sweep spec, written as protocols so that it does not import
# ``sweep.spec``: the spec's parser validates every trial config through this module when
# a spec is loaded, so the spec sits above it (``spec.Distribution`` and
# ``spec.SweepSpec`` are the implementations).


class Dimension(Protocol):
    """One search dimension (``spec.Distribution``)."""

    @property
    def kind(self) -> str: ...
    @property
    def values(self) -> tuple[Any, ...]: ...
    @property
    def low(self) -> float | None: ...
    @property
    def high(self) -> float | None: ...
    @property
    def step(self) -> float | None: ...
    def finite_values(self) -> tuple[Any, ...] | None: ...
    def bounds(self) -> tuple[Any, ...]: ...


class Searcher(Protocol):
    @property
    def kind(self) -> str: ...


class SearchSpec(Protocol):
    """A parsed sweep spec (``spec.SweepSpec``)."""

    @property
    def source(self) -> str: ...
    @property
    def base_config(self) -> ExperimentConfig: ...
    @property
    def space(self) -> Sequence[tuple[str, Dimension]]: ...
    @property
    def extra_trials(self) -> Sequence[Sequence[tuple[str, Any]]]: ...
    @property
    def searcher(self) -> Searcher: ...


TRIAL_KEY = "trial"
"""Tune config key holding a trial's dotted overrides: ``config["trial"] = {dotted: value}``."""

SAMPLE_KEYS = ("data.filter_ratio", "data.sample_seed")


def is_relevant(dotted: str, method: MethodSpec) -> bool:
    """Whether the value of ``dotted`` can change a trial of ``method``."""
    if dotted.startswith("pretrain.") or dotted == "model.integration":
        return method.pretrainer is not None
    if dotted in SAMPLE_KEYS:
        return not method.uses_full_data
    return True


def is_pretraining_key(dotted: str) -> bool:
    """Whether ``dotted`` can change the pretrained tables (so pretraining must be redone)."""
    if dotted in ("method", "seed", "model.embedding_dim") or dotted.startswith("pretrain."):
        return True
    return dotted.startswith("data.") and dotted not in SAMPLE_KEYS


def effective_overrides(base: ExperimentConfig, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The overrides that matter for this trial, with the coupling and conditionals applied."""
    method_name: MethodName = overrides.get("method", base.method)
    method = METHODS[method_name]
    result = {key: value for key, value in overrides.items() if is_relevant(key, method)}
    if method.pretrainer is not None:
        if "model.embedding_dim" in result:
            result["pretrain.embedding_dim"] = int(result["model.embedding_dim"]) - 1
        elif "pretrain.embedding_dim" in result:
            result["model.embedding_dim"] = int(result["pretrain.embedding_dim"]) + 1
    else:
        if base.model.integration not in ("auto", "none") or "model.integration" in overrides:
            result["model.integration"] = "auto"
    if method.uses_full_data:
        result["data.filter_ratio"] = 1.0
    return result


def resolve_trial_config(base: ExperimentConfig, overrides: Mapping[str, Any]) -> ExperimentConfig:
    """The trial's experiment config: base + effective overrides, validated."""
    return replace_dotted(base, effective_overrides(base, overrides))


def _point_key(point: Mapping[str, Any]) -> str:
    return json.dumps(sorted(point.items()), default=repr)


def _distinct_effective(
    base: ExperimentConfig, raw_points: Iterator[dict[str, Any]] | list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """The effective overrides of ``raw_points``, each distinct one once, first kept."""
    seen: set[str] = set()
    result = []
    for point in raw_points:
        effective = effective_overrides(base, point)
        key = _point_key(effective)
        if key not in seen:
            seen.add(key)
            result.append(effective)
    return result


def grid_points(spec: SearchSpec) -> list[dict[str, Any]]:
    """Every distinct trial of a grid spec: the grid's cartesian product, then extra_trials.

    Points that differ only in keys irrelevant to their method (e.g. GS at two filter
    ratios) collapse into one, keeping the first.
    """
    keys = [key for key, _ in spec.space]
    value_lists = [dist.values for _, dist in spec.space]
    # No dimension: extra_trials only (the final stage of cadc_ray.sweep.tuned).
    raw_points = (
        [dict(zip(keys, values, strict=True)) for values in itertools.product(*value_lists)]
        if spec.space
        else []
    )
    raw_points.extend(dict(point) for point in spec.extra_trials)
    return _distinct_effective(spec.base_config, raw_points)


MAX_COUNTED_POINTS = 100_000
""":func:`distinct_trial_count` enumerates spaces up to this many raw combinations."""


def distinct_trial_count(spec: SearchSpec) -> int | None:
    """How many distinct trials the space can produce once the conditionals and the
    coupling are applied (GS at any filter ratio is one trial), or None when a dimension is
    continuous or there are more than :data:`MAX_COUNTED_POINTS` combinations.

    A searcher that has tried this many distinct trials has tried them all.
    """
    keys = [key for key, _ in spec.space]
    value_lists: list[tuple[Any, ...]] = []
    combinations = 1
    for _, dist in spec.space:
        values = dist.finite_values()
        if values is None:
            return None
        value_lists.append(values)
        combinations *= len(values)
    if combinations > MAX_COUNTED_POINTS:
        return None
    raw_points = (
        dict(zip(keys, values, strict=True)) for values in itertools.product(*value_lists)
    )
    return len(_distinct_effective(spec.base_config, raw_points))


def searched_trial_count(spec: SearchSpec, num_samples: int) -> int:
    """How many trials a search of ``num_samples`` runs: no more than the space's distinct
    trials (:func:`distinct_trial_count`), since no point runs twice."""
    distinct = distinct_trial_count(spec)
    return num_samples if distinct is None else min(num_samples, distinct)


def candidate_points(spec: SearchSpec, limit: int) -> Iterator[tuple[str, dict[str, Any]]]:
    """Configs to validate eagerly, labelled for error messages.

    Grid: every trial. Optuna: the product of every dimension's finite values or bounds
    (at most ``limit`` combinations).
    """
    if spec.searcher.kind == "grid":
        for index, point in enumerate(grid_points(spec)):
            yield f"grid point {index}", point
        return
    keys = [key for key, _ in spec.space]
    combos = itertools.product(*(dist.bounds() for _, dist in spec.space))
    for values in itertools.islice(combos, limit):
        yield "space", effective_overrides(spec.base_config, dict(zip(keys, values, strict=True)))


# ---------------------------------------------------------------------------------------
# Pretraining configs: computed once per distinct config, before the trials.


def _enumerable_values(spec: SearchSpec, key: str, dist: Dimension) -> tuple[Any, ...]:
    values = dist.finite_values()
    if values is None:
        what = (
            "selects the training sample, and samples are materialized once before the trials"
            if key in SAMPLE_KEYS
            else "changes the pretrained tables, and pretraining runs once per distinct "
            "pretraining config before the trials"
        )
        raise ConfigError(
            f"{spec.source}: space.{key}: {what}: make this dimension discrete (choice, grid, "
            "int with a step, or uniform with a step)"
        )
    return values


def trial_configs_for_setup(spec: SearchSpec) -> list[ExperimentConfig]:
    """Representative configs covering every pretraining config and every sample.

    Grid: every trial. Optuna: the product of the values of the pretraining and sample
    dimensions, which must be discrete: both are computed once, before the trials.
    """
    if spec.searcher.kind == "grid":
        return [resolve_trial_config(spec.base_config, point) for point in grid_points(spec)]
    setup_dims = [
        (key, _enumerable_values(spec, key, dist))
        for key, dist in spec.space
        if is_pretraining_key(key) or key in SAMPLE_KEYS
    ]
    keys = [key for key, _ in setup_dims]
    configs: dict[str, ExperimentConfig] = {}
    for values in itertools.product(*(values for _, values in setup_dims)):
        config = resolve_trial_config(spec.base_config, dict(zip(keys, values, strict=True)))
        configs.setdefault(json.dumps(to_dict(config), sort_keys=True), config)
    return list(configs.values())


def distinct_pretrain_configs(configs: list[ExperimentConfig]) -> dict[str, ExperimentConfig]:
    """pretrain key -> the first config with that key (in order)."""
    result: dict[str, ExperimentConfig] = {}
    for config in configs:
        key = pretrain_key(config)
        if key is not None:
            result.setdefault(key, config)
    return result


# ---------------------------------------------------------------------------------------
# Optuna define-by-run space (a picklable object: the searcher is pickled on checkpoint).

_SCALAR_TYPES = (str, int, float, bool, type(None))


@dataclass(frozen=True)
class OptunaSpace:
    """Samples the method first, then only the dimensions that matter for it."""

    base_method: MethodName
    dimensions: tuple[tuple[str, Dimension], ...]

    def __call__(self, trial: Any) -> dict[str, Any]:
        method_name: MethodName = self.base_method
        chosen: dict[str, Any] = {}
        for key, dist in self.dimensions:
            if key != "method" and not is_relevant(key, METHODS[method_name]):
                continue
            value = suggest(trial, f"{TRIAL_KEY}/{key}", dist)
            chosen[key] = value
            if key == "method":
                method_name = value
        # Returned values replace the raw suggestions (e.g. a choice index -> its tuple).
        return {f"{TRIAL_KEY}/{key}": value for key, value in chosen.items()}


def suggest(trial: Any, name: str, dist: Dimension) -> Any:
    """One Optuna suggestion for ``dist`` (``trial`` is an ``optuna.Trial``)."""
    if dist.kind in ("choice", "grid"):
        if all(isinstance(value, _SCALAR_TYPES) for value in dist.values):
            return trial.suggest_categorical(name, list(dist.values))
        # Optuna categoricals hold scalars only: sample the index of a tuple value.
        index = trial.suggest_categorical(name, list(range(len(dist.values))))
        return dist.values[index]
    assert dist.low is not None and dist.high is not None
    if dist.kind == "uniform":
        return trial.suggest_float(name, dist.low, dist.high, step=dist.step)
    if dist.kind == "loguniform":
        return trial.suggest_float(name, dist.low, dist.high, log=True)
    if dist.kind == "int":
        return trial.suggest_int(name, int(dist.low), int(dist.high), step=int(dist.step or 1))
    if dist.kind == "logint":
        return trial.suggest_int(name, int(dist.low), int(dist.high), log=True)
    raise AssertionError(f"unhandled distribution {dist.kind}")  # pragma: no cover
