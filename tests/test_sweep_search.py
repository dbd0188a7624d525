"""Selection on validation, the stored Optuna study, early-stopped trials and the Pareto report.

- every shipped spec selects on validation (a test-metric objective is refused at load);
- a trial ASHA stopped gives Optuna a finite value (its best validation value so far and
  its seconds so far), an errored one FAIL, none NaN; the study lives in a journal file
  that a restored searcher (what Tune does on ``--resume``) keeps writing to;
- the Pareto set is listed (``pareto.md``) and drawn (``plots/pareto_front.png``);
- end to end through the shared Ray session (marked ``ray``): Optuna + ASHA with local-mode
  trials (``num_workers: 0``), whose per-epoch reports reach Tune; MF pretrained once per
  distinct teacher.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import optuna
import pytest
from conftest import runnable_sweep_base, teacher_dims

from cadc_ray.config import ConfigError
from cadc_ray.sweep.callbacks import (
    MAX_REPEATED_PROPOSALS,
    REPEAT_OF_ATTR,
    REPEAT_OF_RUNNING_ATTR,
    SEARCH_ENDED_ATTR,
    SweepOptunaSearch,
    objective_values,
)
from cadc_ray.sweep.report import make_record, pareto_markdown, plot_pareto_front
from cadc_ray.sweep.space import OptunaSpace, distinct_trial_count
from cadc_ray.sweep.spec import Objective, load_spec, parse_spec

REPO = Path(__file__).resolve().parents[1]
SPEC_FILES = sorted((REPO / "tune_specs").rglob("*.yaml"))


def tiny_search_spec(output_dir: Path, prepared_root: Path, **changes: Any) -> Any:
    """3 Optuna trials over id size (2 teachers), ratio and integration; ASHA at epoch 2."""
    raw: dict[str, Any] = {
        "name": "tiny-search",
        "base_config": {**runnable_sweep_base(train_epochs=3), "output_root": str(prepared_root)},
        "space": {
            "model.embedding_dim": {"type": "choice", "values": [8, 12]},
            "data.filter_ratio": {"type": "choice", "values": [2, 5]},
            "model.integration": {"type": "choice", "values": ["init_frz", "linear"]},
        },
        "searcher": {"type": "optuna", "sampler": "random", "seed": 0},
        "objectives": [
            {"metric": "val_hr@10", "mode": "max"},
            {"metric": "total_seconds", "mode": "min"},
        ],
        "num_samples": 3,
        "max_concurrent_trials": 2,
        "trial_resources": {"num_workers": 0, "cpus_per_worker": 1, "torch_threads": 1},
        # max_t 2 < 3 epochs: ASHA stops every trial after its 2nd epoch report, before
        # its summary: the path of an early-stopped trial, deterministically.
        "early_stopping": {"type": "asha", "metric": "val_hr@10", "grace_period": 1, "max_t": 2},
        "output_dir": str(output_dir),
    }
    raw.update(changes)
    return parse_spec(raw, "tiny-search.yaml")


# --- selection on validation only ------------------------------------------------------


@pytest.mark.parametrize("path", SPEC_FILES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_shipped_spec_selects_on_validation(path: Path) -> None:
    spec = load_spec(path)
    assert spec.objectives[0].metric == "val_hr@10"
    assert not [o.metric for o in spec.objectives if o.metric.startswith("test_")]


@pytest.mark.parametrize("name", ["search.yaml", "paper/search.yaml"])
def test_search_specs_search_size_ratio_and_integration_together(name: str) -> None:
    spec = load_spec(REPO / "tune_specs" / name)
    space = spec.space_dict
    assert {"model.embedding_dim", "data.filter_ratio", "model.integration"} <= set(space)
    assert space["data.filter_ratio"].kind == "choice"  # sampled by Optuna, not a grid
    assert spec.searcher.kind == "optuna" and spec.searcher.seed == 0
    assert "residual" in space["model.integration"].values
    assert [(o.metric, o.mode) for o in spec.objectives] == [
        ("val_hr@10", "max"),
        ("total_seconds", "min"),
        ("model_bytes", "min"),
    ]
    assert spec.early_stopping.kind == "asha"


def test_a_test_metric_objective_is_refused_at_load(tmp_path: Path) -> None:
    text = (REPO / "tune_specs" / "search.yaml").read_text(encoding="utf-8")
    path = tmp_path / "leaky.yaml"
    path.write_text(
        text.replace("{metric: val_hr@10, mode: max}", "{metric: test_hr@10, mode: max}").replace(
            "base: ../configs/", f"base: {REPO / 'configs'}/"
        ),
        encoding="utf-8",
    )
    with pytest.raises(ConfigError, match=r"objectives\[0\].metric: 'test_hr@10' is a test metric"):
        load_spec(path)


# --- what Optuna is told ---------------------------------------------------------------

METRICS = ["val_hr@10", "total_seconds"]

SUMMARY = {"val_hr@10": 0.25, "test_hr@10": 0.2, "total_seconds": 30.0, "best_epoch": 3}

# ASHA stopped the trial on this per-epoch report: final-only metrics are NaN placeholders.
EPOCH_REPORT = {
    "val_hr@10": 0.125,  # this epoch's value
    "best_val_hr@10": 0.25,  # best so far: what the trial would have been selected by
    "test_hr@10": math.nan,
    "total_seconds": math.nan,
    "pretrain_seconds": 4.0,
    "time_total_s": 6.5,
}


def test_objective_values_of_a_finished_and_of_a_stopped_trial() -> None:
    assert objective_values(SUMMARY, METRICS) == [0.25, 30.0]  # the summary, as it is
    assert objective_values(EPOCH_REPORT, METRICS) == [0.25, 10.5]  # best so far; 4 + 6.5 s
    assert objective_values(EPOCH_REPORT, ["val_hr@10"]) == [0.25]
    no_eval_yet = {**EPOCH_REPORT, "best_val_hr@10": math.nan, "val_hr@10": math.nan}
    assert objective_values(no_eval_yet, METRICS) is None
    assert objective_values(None, METRICS) is None
    assert objective_values(EPOCH_REPORT, ["test_hr@10"]) is None  # never from a NaN


def _searcher(journal: Path) -> SweepOptunaSearch:
    spec = tiny_search_spec(journal.parent / "out", journal.parent / "data")
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(journal))
    )
    return SweepOptunaSearch(
        space=OptunaSpace(spec.base_config.method, spec.space),
        metric=METRICS,
        mode=["max", "min"],
        sampler=optuna.samplers.RandomSampler(seed=0),
        study_name="tiny",
        storage=storage,
    )


def test_stopped_trials_reach_the_stored_study_finite_and_survive_a_restore(
    tmp_path: Path,
) -> None:
    journal = tmp_path / "optuna.journal"
    searcher = _searcher(journal)
    for trial_id in ("a", "b", "c", "d"):
        assert searcher.suggest(trial_id) is not None
    searcher.on_trial_result("a", EPOCH_REPORT)  # per-epoch results are not told
    searcher.on_trial_complete("a", EPOCH_REPORT)  # ASHA-stopped
    searcher.on_trial_complete("b", SUMMARY)  # finished
    searcher.on_trial_complete("c", None, error=True)  # errored
    # Tune checkpoints the searcher by pickling it and restores it on --resume.
    searcher.save(str(tmp_path / "searcher.pkl"))
    restored = _searcher(tmp_path / "unused.journal")
    restored.restore(str(tmp_path / "searcher.pkl"))
    restored.on_trial_complete("d", {**EPOCH_REPORT, "time_total_s": 1.0})
    restored.on_trial_complete("a", SUMMARY)  # a repeated completion changes nothing

    # What optuna-dashboard would open: the journal file alone.
    study = optuna.load_study(
        study_name="tiny",
        storage=optuna.storages.JournalStorage(
            optuna.storages.journal.JournalFileBackend(str(journal))
        ),
    )
    # Proposals of a running trial's point were told FAIL and asked again (attribute).
    trials = [trial for trial in study.trials if REPEAT_OF_RUNNING_ATTR not in trial.user_attrs]
    states = [trial.state for trial in trials]
    complete, fail = optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL
    assert states == [complete, complete, fail, complete]
    assert [trial.values for trial in trials] == [
        [0.25, 10.5],
        [0.25, 30.0],
        None,
        [0.25, 5.0],
    ]
    assert set(trials[0].params) == {
        "trial/model.embedding_dim",
        "trial/data.filter_ratio",
        "trial/model.integration",
    }


SMALL_SPACE = {  # 3 distinct points: GS (any ratio: one trial), CADC at ratio 2 or 5
    "method": {"type": "choice", "values": ["gs", "cadc"]},
    "data.filter_ratio": {"type": "choice", "values": [2, 5]},
}


def _small_space_searcher(journal: Path, sampler: Any) -> SweepOptunaSearch:
    spec = tiny_search_spec(journal.parent / "out", journal.parent / "data", space=SMALL_SPACE)
    return SweepOptunaSearch(
        space=OptunaSpace(spec.base_config.method, spec.space),
        metric="val_hr@10",
        mode="max",
        sampler=sampler,
        study_name="small",
        storage=optuna.storages.JournalStorage(
            optuna.storages.journal.JournalFileBackend(str(journal))
        ),
        distinct_trials=distinct_trial_count(spec),
    )


def test_the_distinct_trials_of_a_space_are_counted_after_its_conditionals(
    tmp_path: Path,
) -> None:
    from cadc_ray.sweep.driver import expected_trials

    def spec(**changes: Any) -> Any:
        return tiny_search_spec(tmp_path / "out", tmp_path / "data", **changes)

    assert distinct_trial_count(spec(space=SMALL_SPACE)) == 3  # 2 x 2, GS's two ratios are one
    assert expected_trials(spec(space=SMALL_SPACE, num_samples=10)) == 3
    assert expected_trials(spec(space=SMALL_SPACE, num_samples=2)) == 2
    assert distinct_trial_count(spec()) == 8  # the tiny search: 2 x 2 x 2, all CADC
    learning_rate = {"type": "loguniform", "low": 1e-4, "high": 1e-2}
    continuous = spec(space={**SMALL_SPACE, "train.learning_rate": learning_rate}, num_samples=5)
    assert distinct_trial_count(continuous) is None
    assert expected_trials(continuous) == 5


@pytest.mark.parametrize("sampler", ["tpe", "random"])
def test_a_tried_point_is_answered_from_the_study_and_the_search_ends_when_all_are_tried(
    tmp_path: Path, sampler: str
) -> None:
    journal = tmp_path / "optuna.journal"
    chosen = (
        optuna.samplers.TPESampler(seed=0, n_startup_trials=1)
        if sampler == "tpe"
        else optuna.samplers.RandomSampler(seed=0)
    )
    searcher = _small_space_searcher(journal, chosen)
    run: list[str] = []
    for number in range(10):
        config = searcher.suggest(f"t{number}")
        if config == "FINISHED":
            break
        assert isinstance(config, dict)
        point = json.dumps(config["trial"], sort_keys=True)
        assert point not in run  # never handed to Tune twice
        run.append(point)
        value = {"gs": 0.5, "cadc": 0.25}[config["trial"]["method"]]
        searcher.on_trial_complete(f"t{number}", {"val_hr@10": value})
    assert len(run) == 3  # every distinct point once, then the search ended
    assert searcher.suggest("later") == "FINISHED"

    study = optuna.load_study(
        study_name="small",
        storage=optuna.storages.JournalStorage(
            optuna.storages.journal.JournalFileBackend(str(journal))
        ),
    )
    assert "3 distinct points" in study.user_attrs[SEARCH_ENDED_ATTR]
    by_number = {trial.number: trial for trial in study.trials}
    repeats = [trial for trial in study.trials if REPEAT_OF_ATTR in trial.user_attrs]
    for repeat in repeats:  # told the values of the trial it repeats, not run
        earlier = by_number[repeat.user_attrs[REPEAT_OF_ATTR]]
        assert repeat.params == earlier.params and repeat.values == earlier.values
    assert len(study.trials) == 3 + len(repeats)


class ScriptedSampler(optuna.samplers.BaseSampler):
    """Proposes ``points[trial.number]`` (the last one after the script ends)."""

    def __init__(self, points: list[dict[str, Any]]) -> None:
        self.points = points

    def infer_relative_search_space(self, study: Any, trial: Any) -> dict[str, Any]:
        return {}

    def sample_relative(self, study: Any, trial: Any, search_space: Any) -> dict[str, Any]:
        return {}

    def sample_independent(self, study: Any, trial: Any, name: str, distribution: Any) -> Any:
        return self.points[min(trial.number, len(self.points) - 1)][name]


CADC_2: dict[str, Any] = {"trial/method": "cadc", "trial/data.filter_ratio": 2}
CADC_5: dict[str, Any] = {"trial/method": "cadc", "trial/data.filter_ratio": 5}
GS: dict[str, Any] = {"trial/method": "gs"}


def _stored_study(journal: Path) -> Any:
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(journal))
    )
    return optuna.load_study(study_name="small", storage=storage)


def test_repeated_proposals_are_answered_from_the_study_until_every_point_is_tried(
    tmp_path: Path,
) -> None:
    journal = tmp_path / "optuna.journal"
    script = [CADC_2, CADC_2, CADC_5, CADC_2, CADC_5, GS]
    searcher = _small_space_searcher(journal, ScriptedSampler(script))
    handed = []
    for number, value in enumerate((0.25, 0.5, 0.75)):
        config = searcher.suggest(f"t{number}")
        assert isinstance(config, dict)
        handed.append(config["trial"])
        searcher.on_trial_complete(f"t{number}", {"val_hr@10": value})
    # Optuna trials 1, 3 and 4 repeated finished points: told their values, not run.
    assert handed == [
        {"method": "cadc", "data.filter_ratio": 2},
        {"method": "cadc", "data.filter_ratio": 5},
        {"method": "gs"},
    ]
    assert searcher.suggest("t3") == "FINISHED"  # all 3 distinct points tried
    study = _stored_study(journal)
    assert [trial.values for trial in study.trials] == [
        [0.25],
        [0.25],
        [0.5],
        [0.25],
        [0.5],
        [0.75],
    ]
    assert {t.number: t.user_attrs.get(REPEAT_OF_ATTR) for t in study.trials} == {
        0: None,
        1: 0,
        2: None,
        3: 0,
        4: 2,
        5: None,
    }
    assert study.user_attrs[SEARCH_ENDED_ATTR] == "all 3 distinct points of the space are tried"


def test_a_running_trial_s_point_is_not_handed_to_a_second_trial(tmp_path: Path) -> None:
    journal = tmp_path / "optuna.journal"
    script = [CADC_2, CADC_2, CADC_5, CADC_2, GS]
    searcher = _small_space_searcher(journal, ScriptedSampler(script))
    running = [searcher.suggest(trial_id) for trial_id in ("a", "b", "c")]
    assert [config["trial"] for config in running] == [  # type: ignore[index]
        {"method": "cadc", "data.filter_ratio": 2},
        {"method": "cadc", "data.filter_ratio": 5},
        {"method": "gs"},
    ]
    assert searcher.suggest("d") == "FINISHED"  # every point is held by a running trial
    study = _stored_study(journal)
    # Proposals 1 and 3 were a's point while a ran: told FAIL (TPE ignores failed trials).
    assert {t.number: t.user_attrs.get(REPEAT_OF_RUNNING_ATTR) for t in study.trials} == {
        0: None,
        1: "a",
        2: None,
        3: "a",
        4: None,
    }
    assert [t.state for t in study.trials if REPEAT_OF_RUNNING_ATTR in t.user_attrs] == [
        optuna.trial.TrialState.FAIL
    ] * 2


def test_a_sampler_that_proposes_only_tried_points_ends_the_search(tmp_path: Path) -> None:
    journal = tmp_path / "optuna.journal"
    searcher = _small_space_searcher(journal, ScriptedSampler([CADC_2]))
    searcher.distinct_trials = None  # e.g. a continuous space: no count to reach
    assert searcher.suggest("t0") is not None
    searcher.on_trial_complete("t0", {"val_hr@10": 0.25})
    assert searcher.suggest("t1") == "FINISHED"
    study = _stored_study(journal)
    assert len(study.trials) == 1 + MAX_REPEATED_PROPOSALS
    assert "only tried points" in study.user_attrs[SEARCH_ENDED_ATTR]


def test_a_fresh_sweep_is_refused_where_a_study_is_stored(tmp_path: Path) -> None:
    from cadc_ray.sweep.driver import STUDY_FILE, check_output_dir

    spec = tiny_search_spec(tmp_path / "sweep", tmp_path / "data")
    check_output_dir(spec, tmp_path / "sweep", resume=False)  # nothing there yet
    (tmp_path / "sweep").mkdir()
    (tmp_path / "sweep" / STUDY_FILE).write_text("", encoding="utf-8")
    # It would continue that study and mix its trials into the new sweep.
    with pytest.raises(ConfigError, match=r"optuna.journal holds an Optuna study: pass --resume"):
        check_output_dir(spec, tmp_path / "sweep", resume=False)


# --- Pareto set in the report ----------------------------------------------------------


def _record(trial_id: str, hr: float, seconds: float, status_done: bool = False) -> Any:
    spec = tiny_search_spec(Path("out"), Path("data"))
    metrics: dict[str, Any] = {"val_hr@10": hr, "total_seconds": seconds}
    if status_done:
        metrics["done"] = True  # stopped early: no test metric
    else:
        metrics["test_hr@10"] = hr - 0.01
    return make_record(
        trial_id=trial_id,
        overrides={"model.embedding_dim": 8, "model.integration": "linear"},
        base=spec.base_config,
        metrics=metrics,
        error=None,
    )


def test_pareto_set_is_listed_and_drawn(tmp_path: Path) -> None:
    records = [
        _record("t0", 0.20, 10.0),
        _record("t1", 0.30, 20.0),
        _record("t2", 0.25, 30.0),  # dominated by t1
        _record("t3", 0.50, 1.0, status_done=True),  # stopped: not a candidate
    ]
    objectives = [Objective("val_hr@10", "max"), Objective("total_seconds", "min")]
    front = ["t0", "t1"]
    markdown = pareto_markdown(records, objectives, front)
    rows = markdown.splitlines()[-2:]
    assert rows == ["| t0 | 8 | linear | 20 | 10 |", "| t1 | 8 | linear | 30 | 20 |"]
    assert "(2 of 3 finished)" in markdown
    path = tmp_path / "plots" / "pareto_front.png"
    assert plot_pareto_front(records, objectives, front, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not plot_pareto_front(records, objectives[:1], front, tmp_path / "one.png")


# --- end to end: Optuna + ASHA, local-mode trials ---------------------------------------


@pytest.mark.ray
def test_asha_stopped_local_mode_trials_give_optuna_finite_values(
    ray_session: None, tmp_path: Path
) -> None:
    from cadc_ray.sweep.driver import STUDY_FILE, run_sweep

    spec = tiny_search_spec(tmp_path / "sweep", tmp_path / "data")
    outcome = run_sweep(spec)

    # One MF per distinct teacher (id sizes 8 and 12 -> d = 7 and 11), before the trials.
    assert sorted(teacher_dims(outcome.pretrain_runs)) == [7, 11]
    assert len(set(outcome.pretrained_ref_ids.values())) == 2

    # Every trial was stopped by ASHA on a per-epoch report (local mode reports epochs):
    # at its first rung (epoch 1) or at max_t (epoch 2); the first trial to reach the rung
    # always goes on, so at least one trial reported two epochs.
    assert len(outcome.records) == 3
    iterations = []
    for record in outcome.records:
        assert record["status"] == "stopped", record
        metrics = record["metrics"]
        assert metrics["training_iteration"] in (1, 2)
        assert metrics["epoch"] == metrics["training_iteration"]  # one Tune result per epoch
        assert 0.0 <= metrics["best_val_hr@10"] <= 1.0
        assert math.isnan(metrics["test_hr@10"])  # no summary: stopped before it
        iterations.append(metrics["training_iteration"])
    assert max(iterations) == 2

    # The stored study: each stopped trial COMPLETE with its best validation value so far.
    study = optuna.load_study(
        study_name=spec.name,
        storage=optuna.storages.JournalStorage(
            optuna.storages.journal.JournalFileBackend(str(tmp_path / "sweep" / STUDY_FILE))
        ),
    )
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 3
    told = [(t.params, t.values) for t in study.trials]
    assert all(math.isfinite(v) and v >= 0.0 for _, values in told for v in values or [math.nan])
    for record in outcome.records:
        params = {f"trial/{key}": value for key, value in record["overrides"].items()}
        best_so_far = record["metrics"]["best_val_hr@10"]
        assert (params, best_so_far) in [(p, values[0]) for p, values in told if values]
    # No finished trial: no best config, an empty Pareto set (stopped trials are not in it).
    best = json.loads((tmp_path / "sweep" / "best.json").read_text())
    assert best["best"] is None and best["pareto_front"] == []


@pytest.mark.ray
def test_a_sweep_with_more_samples_than_points_runs_each_point_once(
    ray_session: None, tmp_path: Path
) -> None:
    """Through Tune: 6 samples of a 3-point space run 3 trials, then the searcher ends the
    search; the sweep is complete (not "interrupted") and says why it ran fewer."""
    from cadc_ray.sweep.driver import run_sweep

    spec = tiny_search_spec(
        tmp_path / "sweep",
        tmp_path / "data",
        space=SMALL_SPACE,
        num_samples=6,
        searcher={"type": "optuna", "sampler": "tpe", "seed": 0},
    )
    outcome = run_sweep(spec)
    points = sorted(json.dumps(record["overrides"], sort_keys=True) for record in outcome.records)
    assert len(points) == 3 == len(set(points))
    assert outcome.search_ended == "all 3 distinct points of the space are tried"
    assert not outcome.interrupted
    summary = json.loads((tmp_path / "sweep" / "summary.json").read_text())
    assert summary["search_ended"] == outcome.search_ended and summary["trials"] == 3


def test_check_says_how_many_trials_an_optuna_search_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--check``: 6 samples of a 3-point space run 3 trials; a continuous space runs
    ``num_samples``."""
    import yaml

    from cadc_ray.sweep.cli import main

    raw = {
        "name": "small",
        "base_config": runnable_sweep_base(),
        "space": SMALL_SPACE,
        "searcher": {"type": "optuna", "sampler": "tpe", "seed": 0},
        "objectives": [{"metric": "val_hr@10", "mode": "max"}],
        "num_samples": 6,
        "output_dir": str(tmp_path / "out"),
    }
    path = tmp_path / "small.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    assert main([str(path), "--check"]) == 0
    assert (
        "  3 Optuna trials over ['method', 'data.filter_ratio'] (the space has 3 distinct points)"
        in (capsys.readouterr().out)
    )
    raw["space"] = {"train.learning_rate": {"type": "loguniform", "low": 1e-4, "high": 1e-2}}
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    assert main([str(path), "--check"]) == 0
    assert "  6 Optuna trials over ['train.learning_rate']\n" in capsys.readouterr().out
