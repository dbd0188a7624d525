"""End-to-end sweeps on tiny synthetic data through the shared Ray session.

- pretraining runs exactly once per distinct pretraining config, and every trial reads the
  one ObjectRef the driver put (no per-trial copy);
- a sweep stopped by SIGTERM resumes: the remaining trials finish, finished ones are not re-run,
  the pretrained tables are reloaded from disk instead of being trained again.
"""

from __future__ import annotations

import csv
import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest
import ray
from conftest import runnable_sweep_base, teacher_dims
from ray import tune

from cadc_ray.config import ConfigError
from cadc_ray.models.pretrained import PretrainedTables
from cadc_ray.sweep.driver import run_sweep
from cadc_ray.sweep.spec import SweepSpec, parse_spec

pytestmark = pytest.mark.ray


def tiny_spec(output_dir: Path, prepared_root: Path, **changes: Any) -> SweepSpec:
    """3 trials: CADC at two id sizes (two pretraining configs) and Random."""
    raw: dict[str, Any] = {
        "name": "tiny",
        "base_config": {**runnable_sweep_base(), "output_root": str(prepared_root)},
        "space": {
            "method": {"type": "grid", "values": ["cadc"]},
            "model.embedding_dim": {"type": "grid", "values": [8, 12]},
        },
        "extra_trials": [{"method": "random", "model.embedding_dim": 8}],
        "searcher": {"type": "grid"},
        "objectives": [{"metric": "val_hr@10", "mode": "max"}],
        "max_concurrent_trials": 2,
        "trial_resources": {"num_workers": 0, "cpus_per_worker": 1, "torch_threads": 1},
        "output_dir": str(output_dir),
    }
    raw.update(changes)
    return parse_spec(raw, "tiny.yaml")


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


class InterruptAfterFirstTrial(tune.Callback):
    """Sends this process SIGTERM when the first trial completes, once.

    SIGTERM (what a scheduler or ``kill`` sends) must stop the sweep like a Ctrl-C:
    run_sweep forwards it to Tune's SIGINT handler, which saves the experiment state
    (the CLI test in test_fault_tolerance.py covers SIGINT itself).

    The marker files keep it from firing again after ``Tuner.restore`` (which restores
    the callbacks as they were pickled when the sweep started).
    """

    def __init__(self, marker: Path) -> None:
        self.marker = marker
        self.sent_marker = marker.with_suffix(".sent")  # files, not attributes: see above

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        if not self.marker.exists():
            self.marker.write_text(trial.trial_id)

    def on_step_begin(self, iteration: int, trials: list[Any], **info: Any) -> None:
        # Interrupt once Tune itself holds the first trial as TERMINATED: on_trial_complete
        # fires before the controller sets that status, and an interrupt in between saves
        # the trial as RUNNING, so --resume rightly runs it again (seen once, 2026-11-29).
        if not self.marker.exists() or self.sent_marker.exists():
            return
        first = self.marker.read_text()
        if any(t.trial_id == first and t.status == "TERMINATED" for t in trials):
            self.sent_marker.write_text(first)
            os.kill(os.getpid(), signal.SIGTERM)


def test_sweep_shares_pretraining_and_resumes_after_an_interrupt(
    ray_session: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    puts: list[str] = []
    original_put = ray.put

    def counting_put(value: Any, *args: Any, **kwargs: Any) -> Any:
        ref = original_put(value, *args, **kwargs)
        if isinstance(value, PretrainedTables):
            puts.append(ref.hex())
        return ref

    monkeypatch.setattr(ray, "put", counting_put)
    spec = tiny_spec(tmp_path / "sweep", tmp_path / "data")
    marker = tmp_path / "interrupted-after"

    # --- first run: interrupted (SIGTERM) once the first trial has finished ---
    first = run_sweep(spec, callbacks=[InterruptAfterFirstTrial(marker)])
    assert first.interrupted
    assert sorted(teacher_dims(first.pretrain_runs)) == [7, 11]  # once per distinct config
    assert sorted(puts) == sorted(first.pretrained_ref_ids.values())  # one put per config
    finished_first = {r["trial_id"]: r for r in first.records if r["status"] == "finished"}
    assert marker.read_text() in finished_first and len(finished_first) < 3
    assert {r["status"] for r in first.records} <= {"finished", "incomplete"}

    # --- resume: the rest finishes, nothing is pretrained or re-run twice ---
    puts.clear()
    resumed = run_sweep(spec, resume=True)
    assert not resumed.interrupted
    assert resumed.pretrain_runs == []
    assert sorted(resumed.pretrain_loaded) == sorted(first.pretrain_runs)
    assert sorted(puts) == sorted(resumed.pretrained_ref_ids.values())
    records = {r["trial_id"]: r for r in resumed.records}
    assert [r["status"] for r in records.values()] == ["finished"] * 3
    interrupted_after = marker.read_text()
    for trial_id, record in records.items():
        metrics = record["metrics"]
        key = metrics["pretrain_key"]
        before = finished_first[trial_id]["metrics"] if trial_id in finished_first else None
        run_again = before is None or metrics["trial_started_at"] != before["trial_started_at"]
        if trial_id == interrupted_after:
            # Tune held it as TERMINATED when the signal came: it is not run again.
            assert not run_again
        if before is not None:
            # Another trial can report its final result just before the signal while Tune
            # still holds it as RUNNING; Tune then rightly runs it again on --resume (seen
            # once in a full run, 2026-12-02). Run again or not: the very same result.
            assert metrics["test_hr@10"] == before["test_hr@10"]
        run = resumed if run_again else first
        if record["config"].method == "cadc":
            # The trial read exactly the ref its driver put for its pretraining config.
            assert metrics["pretrained_ref"] == run.pretrained_ref_ids[key]
            assert metrics["frozen_parameters"] > 0 and metrics["pretrain_seconds"] > 0
        else:
            assert key == "" and metrics["pretrained_ref"] == ""
            assert metrics["frozen_parameters"] == 0 and metrics["pretrain_seconds"] == 0
        assert 0.0 <= metrics["test_hr@10"] <= 1.0
        assert metrics["total_seconds"] == pytest.approx(
            metrics["pretrain_seconds"] + metrics["train_seconds"]
        )

    # --- outputs ---
    folder = resumed.output_dir
    rows = _rows(folder / "results.csv")
    assert [row["method"] for row in rows] == ["cadc", "cadc", "random"]
    assert {row["embedding_dim"] for row in rows if row["method"] == "cadc"} == {"8", "12"}
    assert {row["status"] for row in rows} == {"finished"}
    best = json.loads((folder / "best.json").read_text())
    # Selected on validation (the test split never chooses a configuration).
    assert best["selected_by"] == {"metric": "val_hr@10", "mode": "max"}
    assert best["best"]["metrics"]["val_hr@10"] == max(
        r["metrics"]["val_hr@10"] for r in records.values()
    )
    assert (folder / "best_config.yaml").is_file()
    assert (folder / "plots" / "quality_vs_time.png").stat().st_size > 0
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["finished"] == 3 and not summary["interrupted"]

    # A fresh sweep into the same folder is refused (it would mix two sweeps) ...
    with pytest.raises(ConfigError, match=r"already holds a sweep: pass --resume"):
        run_sweep(spec)
    # ... and so is resuming it with another spec.
    changed = tiny_spec(tmp_path / "sweep", tmp_path / "data", max_concurrent_trials=1)
    with pytest.raises(ConfigError, match=r"--resume: the spec differs .*max_concurrent_trials"):
        run_sweep(changed, resume=True)


@pytest.mark.ray
def test_teachers_train_at_once_in_ray_tasks_and_match_the_driver_s(
    ray_session: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two teachers to train go to two Ray tasks, each with its stage's CPUs; each task's
    tables are the ones the same config trains in the driver, bit for bit, and each is
    saved as it finishes."""
    import numpy as np

    from cadc_ray import pipeline
    from cadc_ray.config import ExperimentConfig, from_dict, replace_dotted
    from cadc_ray.pretrain_key import pretrain_key

    base = from_dict(ExperimentConfig, runnable_sweep_base(), "base")
    base = replace_dotted(
        base,
        {
            "output_root": str(tmp_path / "data"),
            "resources.num_workers": 0,
            "resources.cpus_per_worker": 1,
            "resources.torch_threads": 1,
        },
    )
    configs = [
        replace_dotted(base, {"pretrain.embedding_dim": dim, "model.embedding_dim": dim + 1})
        for dim in (7, 11)
    ]
    dataset = pipeline.prepare_inputs(configs)[pipeline.data_key(base)]
    options: list[dict[str, Any]] = []
    original_options = pipeline.stage_task_options

    def recorded_options(config: ExperimentConfig, use_gpu: bool, stage: str) -> dict[str, Any]:
        assert stage == "pretrain"
        options.append(original_options(config, use_gpu, "pretrain"))
        return options[-1]

    monkeypatch.setattr(pipeline, "stage_task_options", recorded_options)
    saved = pipeline.SavedTeachers(tmp_path / "teachers", reuse=True)
    jobs = [(str(pretrain_key(config)), config, dataset) for config in configs]
    trained = pipeline.train_teachers(
        jobs,
        teachers=saved,
        use_gpu=False,
        storage_path=str(tmp_path / "train"),
        own_local_ray=True,
    )
    assert options == [{"num_cpus": 1, "num_gpus": 0}] * 2  # one task per teacher
    for key, config, _ in jobs:
        teacher = trained[key]
        assert not teacher.reused and teacher.result is not None
        in_driver = pipeline.pretrain(
            config,
            dataset,
            teachers=None,
            use_gpu=False,
            run_name=f"driver-{key}",
            storage_path=str(tmp_path / "train"),
        )
        np.testing.assert_array_equal(teacher.tables.user, in_driver.tables.user)
        np.testing.assert_array_equal(teacher.tables.item, in_driver.tables.item)
        reloaded = saved.load(key)  # saved as it finished
        assert reloaded is not None
        np.testing.assert_array_equal(reloaded.tables.user, in_driver.tables.user)
    # On the command's own Ray, one teacher to train, or one at a time: no task, the
    # driver trains them. On any other Ray (a cluster) the driver trains none.
    for name, some_jobs, at_once, own_local_ray, tasks in (
        ("one", jobs[:1], None, True, 0),
        ("serial", jobs, 1, True, 0),
        ("cluster-one", jobs[:1], None, False, 1),
        ("cluster-serial", jobs, 1, False, 2),
    ):
        options.clear()
        serial = pipeline.train_teachers(
            some_jobs,
            teachers=pipeline.SavedTeachers(tmp_path / name, reuse=True),
            use_gpu=False,
            storage_path=str(tmp_path / f"train-{name}"),
            own_local_ray=own_local_ray,
            max_at_once=at_once,
        )
        assert options == [{"num_cpus": 1, "num_gpus": 0}] * tasks, name
        assert set(serial) == {job[0] for job in some_jobs}
        np.testing.assert_array_equal(
            serial[jobs[0][0]].tables.user, trained[jobs[0][0]].tables.user
        )


@pytest.mark.parametrize(
    ("cores", "threads", "slots"), [(2, [1, 1], 1), (3, [1, 1], 2), (16, [2, 4], 3), (1, [2], 1)]
)
def test_a_machine_trains_as_many_teachers_at_once_as_its_cores_hold(
    monkeypatch: pytest.MonkeyPatch, cores: int, threads: list[int], slots: int
) -> None:
    from cadc_ray import pipeline
    from cadc_ray.config import ExperimentConfig, from_dict

    monkeypatch.setattr(os, "cpu_count", lambda: cores)
    configs = [
        from_dict(ExperimentConfig, {"resources": {"torch_threads": count}}, "c")
        for count in threads
    ]
    assert pipeline.machine_teacher_slots(configs) == slots
