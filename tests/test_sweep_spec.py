"""Sweep specs: strict validation on load, conditionals/coupling, grid points, Optuna space.

Pure Python: no Ray is started here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from conftest import tiny_sweep_base

from cadc_ray.config import ConfigError
from cadc_ray.pipeline import distinct_samples
from cadc_ray.sweep.space import (
    OptunaSpace,
    distinct_pretrain_configs,
    effective_overrides,
    grid_points,
    pretrain_key,
    resolve_trial_config,
    trial_configs_for_setup,
)
from cadc_ray.sweep.spec import Distribution, load_spec, parse_spec

REPO = Path(__file__).resolve().parents[1]

TINY_BASE: dict[str, Any] = tiny_sweep_base(train_epochs=2)


def _spec(**changes: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "name": "tiny",
        "base_config": TINY_BASE,
        "space": {
            "method": {"type": "grid", "values": ["cadc", "random"]},
            "data.filter_ratio": {"type": "grid", "values": [2, 10]},
        },
        "searcher": {"type": "grid"},
    }
    raw.update(changes)
    return raw


def _write(tmp_path: Path, raw: dict[str, Any], name: str = "spec.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


# --- validation errors name the file and the dotted path -------------------------------


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"serach": {"type": "grid"}}, r"spec.yaml: serach: unknown key"),
        (
            {"space": {"model.embeding_dim": {"type": "grid", "values": [8]}}},
            r"spec.yaml: space: model.embeding_dim: unknown config key",
        ),
        (
            {"space": {"model": {"type": "grid", "values": [8]}}},
            r"spec.yaml: space: model: is a section, not a value",
        ),
        (
            {"space": {"data.filter_ratio": {"type": "gaussian", "values": [2]}}},
            r"spec.yaml: space.data.filter_ratio.type: unknown distribution 'gaussian'",
        ),
        (
            {"space": {"data.filter_ratio": {"type": "grid", "values": []}}},
            r"spec.yaml: space.data.filter_ratio.values: expected a non-empty list",
        ),
        ({"space": {}}, r"spec.yaml: space: empty search space"),
        (
            {"space": {"data.filter_ratio": {"type": "grid", "values": [2, "ten"]}}},
            r"spec.yaml: space.data.filter_ratio.values\[1\]: expected a number, got 'ten'",
        ),
        (
            {"space": {"model.integration": {"type": "grid", "values": ["init_frz", "frozen"]}}},
            r"spec.yaml: space.model.integration.values\[1\]: 'frozen' is not one of",
        ),
        (
            {
                "searcher": {"type": "optuna"},
                "space": {"model.embedding_dim": {"type": "uniform", "low": 8, "high": 64}},
            },
            r"spec.yaml: space.model.embedding_dim: distribution 'uniform' needs a float key",
        ),
        (
            {
                "searcher": {"type": "optuna"},
                "space": {
                    "train.learning_rate": {"type": "loguniform", "low": 0.01, "high": 0.001}
                },
            },
            r"spec.yaml: space.train.learning_rate: empty range: low 0.01 > high 0.001",
        ),
        (
            {
                "searcher": {"type": "optuna"},
                "space": {"train.learning_rate": {"type": "loguniform", "low": 0.001, "hi": 0.1}},
            },
            r"spec.yaml: space.train.learning_rate.hi: unknown key",
        ),
        (
            {"space": {"data.filter_ratio": {"type": "choice", "values": [2, 10]}}},
            r"spec.yaml: space.data.filter_ratio: searcher 'grid' needs 'grid' dimensions, got 'choice'",
        ),
        (
            {"overrides": {"train.epoch": 3}},
            r"spec.yaml: overrides.train.epoch: unknown config key",
        ),
        (
            {"overrides": {"train.epochs": "three"}},
            r"spec.yaml: overrides.train.epochs: expected an integer",
        ),
        (
            {"objectives": [{"metric": "test_hr@20", "mode": "max"}]},
            r"spec.yaml: objectives\[0\].metric: unknown metric 'test_hr@20'",
        ),
        (
            {"objectives": [{"metric": "test_hr@10", "mode": "maximize"}]},
            r"spec.yaml: objectives\[0\].mode: 'maximize' is not one of",
        ),
        (
            {"objectives": [{"metric": "test_hr@10", "mode": "max"}]},
            r"spec.yaml: objectives\[0\].metric: 'test_hr@10' is a test metric: configurations "
            r"are selected on validation only \(use 'val_hr@10'\)",
        ),
        (
            {
                "objectives": [
                    {"metric": "val_hr@10", "mode": "max"},
                    {"metric": "test_ndcg@10", "mode": "max"},
                ]
            },
            r"spec.yaml: objectives\[1\].metric: 'test_ndcg@10' is a test metric",
        ),
        (
            {"searcher": {"type": "grid", "storage": "sqlite:///study.db"}},
            r"spec.yaml: searcher.storage: only used with searcher 'optuna'",
        ),
        (
            {
                "searcher": {"type": "optuna", "storage": "redis://host/0"},
                "space": {"train.learning_rate": {"type": "loguniform", "low": 0.001, "high": 0.1}},
            },
            r"spec.yaml: searcher.storage: expected an RDB URL",
        ),
        (
            {"early_stopping": {"type": "asha", "metric": "test_hr@10"}},
            r"spec.yaml: early_stopping.metric: ASHA needs a per-epoch validation metric",
        ),
        ({"trial_resources": {"num_gpus": 1}}, r"spec.yaml: trial_resources.num_gpus: unknown key"),
        ({"num_samples": 3}, r"spec.yaml: num_samples: must be 1 with searcher 'grid'"),
        (
            {"storage_path": "ftp://host/results"},
            r"spec.yaml: storage_path: unsupported scheme 'ftp' in 'ftp://host/results'",
        ),
        ({"storage_path": "s3:///"}, r"spec.yaml: storage_path: 's3:///' names no bucket"),
        ({"storage_path": ""}, r"spec.yaml: storage_path: expected a URI or a path, got ''"),
        ({"storage_path": 3}, r"spec.yaml: storage_path: expected a URI or a path, got 3"),
    ],
)
def test_invalid_specs_fail_with_file_and_path(
    tmp_path: Path, changes: dict[str, Any], expected: str
) -> None:
    path = _write(tmp_path, _spec(**changes))
    with pytest.raises(ConfigError, match=expected):
        load_spec(path)


def test_conditional_constraint_violations_are_reported_per_trial(tmp_path: Path) -> None:
    # 'none' discards the pretraining CADC does: config.validate rejects it for cadc.
    raw = _spec(
        space={
            "method": {"type": "grid", "values": ["random", "cadc"]},
            "model.integration": {"type": "grid", "values": ["init", "none"]},
        }
    )
    with pytest.raises(
        ConfigError, match=r"spec.yaml: grid point \d: trial config .*'none' would discard it"
    ):
        load_spec(_write(tmp_path, raw))


def test_continuous_pretraining_dimension_is_rejected(tmp_path: Path) -> None:
    raw = _spec(
        searcher={"type": "optuna"},
        space={"model.embedding_dim": {"type": "int", "low": 8, "high": 200}},
    )
    with pytest.raises(
        ConfigError, match=r"space.model.embedding_dim: changes the pretrained tables"
    ):
        load_spec(_write(tmp_path, raw))


def test_coupled_dimensions_cannot_both_be_searched(tmp_path: Path) -> None:
    raw = _spec(
        space={
            "model.embedding_dim": {"type": "grid", "values": [8]},
            "pretrain.embedding_dim": {"type": "grid", "values": [7]},
        }
    )
    with pytest.raises(
        ConfigError, match=r"space.pretrain.embedding_dim: coupled to model.embedding_dim"
    ):
        load_spec(_write(tmp_path, raw))


def test_set_routes_spec_keys_and_experiment_keys(tmp_path: Path) -> None:
    path = _write(tmp_path, _spec())
    spec = load_spec(
        path, ["output_dir=/tmp/elsewhere", "train.epochs=5", "max_concurrent_trials=3"]
    )
    assert spec.output_dir == Path("/tmp/elsewhere")
    assert spec.max_concurrent_trials == 3
    assert spec.base_config.train.epochs == 5
    with pytest.raises(
        ConfigError, match=r"with --set train\.epocs=5: overrides.train.epocs: unknown config key"
    ):
        load_spec(path, ["train.epocs=5"])


def test_storage_path_defaults_to_none_and_accepts_uris_and_paths(tmp_path: Path) -> None:
    path = _write(tmp_path, _spec())
    assert load_spec(path).storage_path is None
    # --set routes it to the spec (not to the experiment overrides); a trailing / is dropped.
    spec = load_spec(path, ["storage_path=s3://bucket/prefix/"])
    assert spec.storage_path == "s3://bucket/prefix"
    assert spec.to_plain()["storage_path"] == "s3://bucket/prefix"
    assert load_spec(path, ["storage_path=/mnt/nfs/sweeps"]).storage_path == "/mnt/nfs/sweeps"
    assert load_spec(path, ["storage_path=gs://b"]).storage_path == "gs://b"


def test_base_file_is_relative_to_the_spec(tmp_path: Path) -> None:
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "base.yaml").write_text(yaml.safe_dump(TINY_BASE), encoding="utf-8")
    specs = tmp_path / "specs"
    specs.mkdir()
    raw = _spec(base="../configs/base.yaml", base_config={"train": {"epochs": 4}})
    spec = load_spec(_write(specs, raw))
    assert spec.base_config.pretrain.embedding_dim == 7  # from the file
    assert spec.base_config.train.epochs == 4  # inline mapping merged over it
    with pytest.raises(
        ConfigError, match=r"spec.yaml: base: experiment config .*missing.yaml not found"
    ):
        load_spec(_write(specs, _spec(base="missing.yaml")))


# --- conditionals, coupling, grid points ---------------------------------------------


def test_grid_drops_irrelevant_keys_and_runs_gs_once() -> None:
    raw = _spec(
        space={
            "method": {"type": "grid", "values": ["cadc", "random"]},
            "data.filter_ratio": {"type": "grid", "values": [2, 10]},
            "model.integration": {"type": "grid", "values": ["init_frz", "linear"]},
        },
        extra_trials=[{"method": "gs"}, {"method": "gs", "data.filter_ratio": 5}],
    )
    points = grid_points(parse_spec(raw))
    # cadc: 2 ratios x 2 integrations; random: integration irrelevant -> 2; gs once.
    assert len(points) == 4 + 2 + 1
    assert {"method": "random", "data.filter_ratio": 2.0, "model.integration": "auto"} in points
    assert points[-1] == {"method": "gs", "data.filter_ratio": 1.0}


def test_embedding_dim_is_coupled_for_pretraining_methods_only() -> None:
    spec = parse_spec(_spec(space={"model.embedding_dim": {"type": "grid", "values": [16]}}))
    cadc = resolve_trial_config(spec.base_config, {"method": "cadc", "model.embedding_dim": 16})
    assert (cadc.model.embedding_dim, cadc.pretrain.embedding_dim) == (16, 15)
    assert effective_overrides(spec.base_config, {"method": "random", "pretrain.epochs": 9}) == {
        "method": "random"
    }


def test_pretraining_configs_and_samples_are_enumerated_once() -> None:
    raw = _spec(
        space={
            "method": {"type": "grid", "values": ["cadc", "cadc_mlp", "random"]},
            "model.embedding_dim": {"type": "grid", "values": [8, 12]},
            "data.filter_ratio": {"type": "grid", "values": [2, 10]},
        },
        extra_trials=[{"method": "gs"}],
    )
    spec = parse_spec(raw)
    configs = trial_configs_for_setup(spec)
    assert len(configs) == 3 * 2 * 2 + 1
    pretraining = distinct_pretrain_configs(configs)
    # (mf, mf_mlp) x (d=7, d=11): the filter ratio does not change the pretrained tables.
    assert sorted(key.rsplit("-", 1)[0] for key in pretraining) == [
        "mf-d11",
        "mf-d7",
        "mf_mlp-d11",
        "mf_mlp-d7",
    ]
    assert distinct_samples(configs) == [(2.0, 0), (10.0, 0)]
    assert pretrain_key(configs[-1]) is None  # GS


def test_optuna_setup_enumerates_discrete_pretraining_dimensions() -> None:
    raw = _spec(
        searcher={"type": "optuna"},
        space={
            "method": {"type": "choice", "values": ["cadc", "random"]},
            "model.embedding_dim": {"type": "int", "low": 8, "high": 24, "step": 8},
            "data.filter_ratio": {"type": "uniform", "low": 5, "high": 20, "step": 5},
            "train.learning_rate": {"type": "loguniform", "low": 1e-4, "high": 1e-2},
        },
        num_samples=4,
    )
    spec = parse_spec(raw)
    pretraining = distinct_pretrain_configs(trial_configs_for_setup(spec))
    assert sorted(config.pretrain.embedding_dim for config in pretraining.values()) == [7, 15, 23]
    assert distinct_samples(trial_configs_for_setup(spec)) == [
        (r, 0) for r in (5.0, 10.0, 15.0, 20.0)
    ]


def test_continuous_sample_dimension_is_rejected(tmp_path: Path) -> None:
    raw = _spec(
        searcher={"type": "optuna"},
        space={"data.filter_ratio": {"type": "loguniform", "low": 2, "high": 100}},
    )
    with pytest.raises(ConfigError, match=r"space.data.filter_ratio: selects the training sample"):
        load_spec(_write(tmp_path, raw))


def test_distribution_finite_values() -> None:
    assert Distribution("int", low=8, high=24, step=8).finite_values() == (8, 16, 24)
    assert Distribution("uniform", low=0.0, high=1.0, step=0.25).finite_values() == (
        0.0,
        0.25,
        0.5,
        0.75,
        1.0,
    )
    assert Distribution("loguniform", low=1e-4, high=1e-2).finite_values() is None


def test_optuna_space_samples_method_first_and_skips_irrelevant_dimensions() -> None:
    raw = _spec(
        searcher={"type": "optuna", "seed": 3},
        space={
            "model.integration": {"type": "choice", "values": ["init_frz", "linear"]},
            "method": {"type": "choice", "values": ["cadc", "random"]},
            "model.tower_hidden": {"type": "choice", "values": [[16], [32, 16]]},
        },
        num_samples=8,
    )
    spec = parse_spec(raw)
    assert spec.space[0][0] == "method"
    space = OptunaSpace(spec.base_config.method, spec.space)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    seen = []
    for _ in range(12):
        trial = study.ask()
        values = space(trial)
        seen.append(values)
        if values["trial/method"] == "random":
            assert "trial/model.integration" not in values
        else:
            assert values["trial/model.integration"] in ("init_frz", "linear")
        assert values["trial/model.tower_hidden"] in ((16,), (32, 16))  # index mapped back
        study.tell(trial, 0.0)
    assert {v["trial/method"] for v in seen} == {"cadc", "random"}


def test_shipped_specs_are_valid() -> None:
    specs = sorted((REPO / "tune_specs").rglob("*.yaml"))
    assert len(specs) >= 5
    for path in specs:
        spec = load_spec(path)
        assert spec.name


def test_a_validated_teacher_set_on_a_mixed_spec_reaches_its_teacher_and_no_other_trial() -> None:
    """``--set pretrain.eval_every=...`` on a spec whose trials also train Random and GS:
    every trial loads (it once failed at load, docs/sweeps.md), the CADC trials share one
    teacher whose key names the validation, and the key of a teacher without it differs."""
    sets = ["pretrain.eval_every=5", "pretrain.early_stopping_patience=3"]
    validated = trial_configs_for_setup(load_spec(REPO / "tune_specs" / "ratio.yaml", sets))
    plain = trial_configs_for_setup(load_spec(REPO / "tune_specs" / "ratio.yaml"))
    methods = {config.method for config in validated}
    assert {"cadc", "random", "gs"} <= methods
    assert len(validated) == len(plain)
    teachers = distinct_pretrain_configs(validated)
    assert len(teachers) == 1
    assert set(teachers) != set(distinct_pretrain_configs(plain))
    for config in validated:
        assert (config.pretrain.eval_every, config.pretrain.early_stopping_patience) == (5, 3)
