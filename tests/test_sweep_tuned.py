"""Tuned tables (``study_per`` + ``final_seeds``): one study per method, then seeds of each best.

Pure Python: the stage specs, the final grid, the mean/std table and the spec checks
(the stages themselves are ordinary sweeps, covered by the driver tests).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from conftest import runnable_sweep_base, tiny_sweep_base

from cadc_ray.config import ConfigError
from cadc_ray.sweep.report import make_record
from cadc_ray.sweep.space import grid_points, trial_configs_for_setup
from cadc_ray.sweep.spec import load_spec, parse_spec
from cadc_ray.sweep.tuned import (
    canonical_overrides,
    final_spec,
    study_spec,
    study_values,
    table_markdown,
    table_rows,
)

REPO = Path(__file__).resolve().parents[1]


def _raw(**changes: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "name": "tuned",
        "base_config": tiny_sweep_base(train_epochs=2),
        "space": {
            "method": {"type": "grid", "values": ["random", "cadc"]},
            "train.learning_rate": {"type": "loguniform", "low": 0.001, "high": 0.01},
            "model.tower_hidden": {"type": "choice", "values": [[8], [16, 8]]},
        },
        "study_per": "method",
        "final_seeds": [0, 1, 2],
        "searcher": {"type": "optuna", "seed": 0},
        "objectives": [{"metric": "val_hr@10", "mode": "max"}],
        "num_samples": 4,
        "output_dir": "/tmp/tuned-out",
    }
    raw.update(changes)
    return raw


def test_one_study_per_method_with_the_same_budget_and_space() -> None:
    spec = parse_spec(_raw(), "tuned.yaml")
    assert study_values(spec) == ("random", "cadc")
    for method in ("random", "cadc"):
        study = study_spec(spec, method)
        assert study.base_config.method == method
        assert [key for key, _ in study.space] == ["train.learning_rate", "model.tower_hidden"]
        assert study.num_samples == 4 and study.searcher.kind == "optuna"
        assert study.study_per is None and study.name == f"tuned-{method}"
        assert study.output_dir == Path("/tmp/tuned-out/studies") / method
    # Only CADC pretrains: its study has one teacher, Random's none.
    assert len(trial_configs_for_setup(study_spec(spec, "cadc"))) == 1


def test_final_stage_runs_each_chosen_config_at_every_seed() -> None:
    spec = parse_spec(_raw(), "tuned.yaml")
    chosen = {
        "random": {"train.learning_rate": 0.002, "model.tower_hidden": (16, 8)},
        "cadc": {"train.learning_rate": 0.005, "model.tower_hidden": (8,)},
    }
    final = final_spec(spec, chosen)
    assert final.searcher.kind == "grid" and final.early_stopping.kind == "none"
    assert final.output_dir == Path("/tmp/tuned-out/final")
    points = grid_points(final)
    assert len(points) == 6  # 2 methods x 3 seeds, nothing else (no base-config point)
    cadc = [p for p in points if p["method"] == "cadc"]
    assert sorted(p["seed"] for p in cadc) == [0, 1, 2]
    assert all(p["train.learning_rate"] == 0.005 and p["model.tower_hidden"] == (8,) for p in cadc)
    # Three seeds of CADC: three teachers (the seed changes the pretrained tables).
    assert len(trial_configs_for_setup(final)) == 6


def test_overrides_from_json_get_their_config_types_back() -> None:
    assert canonical_overrides({"model.tower_hidden": [16, 8], "seed": 1}) == {
        "model.tower_hidden": (16, 8),
        "seed": 1,
    }


def test_table_has_mean_and_sample_std_over_seeds() -> None:
    spec = parse_spec(_raw(), "tuned.yaml")
    base = spec.base_config
    chosen = {"random": {"train.learning_rate": 0.002}, "cadc": {"train.learning_rate": 0.005}}
    records = []
    for method, hrs in (("random", [0.1, 0.2, 0.3]), ("cadc", [0.3, 0.3, 0.3])):
        for seed, hr in enumerate(hrs):
            records.append(
                make_record(
                    trial_id=f"{method}{seed}",
                    overrides={"method": method, "seed": seed, **chosen[method]},
                    base=base,
                    metrics={"val_hr@10": hr, "test_hr@10": hr, "total_seconds": 10.0 * seed},
                    error=None,
                )
            )
    records.append(  # a failed run does not count
        make_record(
            trial_id="x",
            overrides={"method": "cadc", "seed": 3},
            base=base,
            metrics={},
            error="boom",
        )
    )
    rows = table_rows("method", records, chosen)
    random_row, cadc_row = rows
    assert random_row["seeds"] == [0, 1, 2] and cadc_row["seeds"] == [0, 1, 2]
    assert random_row["test_hr@10"]["mean"] == pytest.approx(0.2)
    assert random_row["test_hr@10"]["std"] == pytest.approx(0.1)  # sample std of .1 .2 .3
    assert cadc_row["test_hr@10"]["std"] == pytest.approx(0.0)
    assert random_row["chosen"] == {"train.learning_rate": 0.002}
    markdown = table_markdown(spec, rows)
    assert (
        "| random | train.learning_rate=0.002 | 3 | 20.00 ± 10.00 | 20.00 ± 10.00 | – | 10 ± 10 |"
        in markdown
    )


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"study_per": "seed"}, r"study_per: expected a dimension of the space, got 'seed'"),
        (
            {"study_per": None, "final_seeds": []},
            r"space.method: 'grid' needs searcher 'grid'",
        ),
        ({"final_seeds": [0, 0]}, r"final_seeds: seeds repeat"),
        ({"final_seeds": ["a"]}, r"final_seeds: expected a list of integers >= 0"),
        (
            {"space": {"method": {"type": "grid", "values": ["random", "cadc"]}}},
            r"space: study_per needs at least one dimension to search besides it",
        ),
        (
            {
                "space": {
                    "method": {"type": "choice", "values": ["random", "cadc"]},
                    "train.learning_rate": {"type": "loguniform", "low": 0.001, "high": 0.01},
                }
            },
            r"space.method: the study_per dimension must be a 'grid'",
        ),
    ],
)
def test_invalid_tuned_specs(changes: dict[str, Any], expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        parse_spec(_raw(**changes), "tuned.yaml")


def test_final_seeds_need_study_per() -> None:
    raw = _raw(study_per=None)
    raw["space"] = {"train.learning_rate": {"type": "loguniform", "low": 0.001, "high": 0.01}}
    with pytest.raises(ConfigError, match=r"final_seeds: needs study_per"):
        parse_spec(raw, "tuned.yaml")


def test_shipped_tuned_table_spec() -> None:
    spec = load_spec(REPO / "tune_specs" / "paper" / "table1_tuned.yaml")
    assert spec.study_per == "method" and spec.final_seeds == (0, 1, 2)
    assert set(study_values(spec)) == {
        "random",
        "over_sampling",
        "under_sampling",
        "logq",
        "cadc_mlp",
        "cadc",
        "cadc_als",
        "gs",
    }
    searched = {key for key, _ in study_spec(spec, "gs").space}
    assert searched == {
        "train.learning_rate",
        "model.tower_hidden",
        "train.early_stopping_patience",
    }
    assert spec.objectives[0].metric == "val_hr@10"


@pytest.mark.ray
def test_tuned_table_end_to_end(ray_session: None, tmp_path: Path) -> None:
    import json

    import optuna

    from cadc_ray.sweep.cli import run_spec
    from cadc_ray.sweep.driver import STUDY_FILE

    raw = _raw(num_samples=1, final_seeds=[0, 1], output_dir=str(tmp_path / "tuned"))
    base = runnable_sweep_base()
    del base["model"]["tower_hidden"]  # the base as before: the studies search tower_hidden
    raw["base_config"] = {**base, "output_root": str(tmp_path / "data")}
    raw["max_concurrent_trials"] = 2
    raw["trial_resources"] = {"num_workers": 0, "cpus_per_worker": 1, "torch_threads": 1}
    spec = parse_spec(raw, "tuned.yaml")
    outcome = run_spec(spec)

    chosen = {}
    for method in ("random", "cadc"):
        folder = tmp_path / "tuned" / "studies" / method
        study = optuna.load_study(
            study_name=f"tuned-{method}",
            storage=optuna.storages.JournalStorage(
                optuna.storages.journal.JournalFileBackend(str(folder / STUDY_FILE))
            ),
        )
        assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE]
        chosen[method] = study.trials[0].params["trial/train.learning_rate"]
        assert json.loads((folder / "best.json").read_text())["best"] is not None

    # The final stage: each method's chosen config at seeds 0 and 1, all finished.
    assert outcome.output_dir == (tmp_path / "tuned" / "final").resolve()
    runs = sorted(
        (r["overrides"]["method"], r["overrides"]["seed"], r["overrides"]["train.learning_rate"])
        for r in outcome.records
    )
    assert runs == [
        ("cadc", 0, chosen["cadc"]),
        ("cadc", 1, chosen["cadc"]),
        ("random", 0, chosen["random"]),
        ("random", 1, chosen["random"]),
    ]
    assert {r["status"] for r in outcome.records} == {"finished"}
    rows = json.loads((tmp_path / "tuned" / "table.json").read_text())
    assert [(row["method"], row["seeds"]) for row in rows] == [("random", [0, 1]), ("cadc", [0, 1])]
    assert all(row["test_hr@10"]["n"] == 2 for row in rows)
    assert "| cadc |" in (tmp_path / "tuned" / "table.md").read_text()
