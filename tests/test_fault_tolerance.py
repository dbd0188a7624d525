"""Fault tolerance and safety: atomic writes, safe checkpoint loading, restarts, resume.

- Atomic writes: a crash in the middle of writing ``results.json`` or a checkpoint never
  leaves a file that a later run reads as valid (the old file stays, or none exists).
- Checkpoints load with ``torch.load(weights_only=True)``: a checkpoint that carries a
  pickled object is refused, and its payload never runs.
- (a) A Train worker SIGKILLed mid-run is restarted by FailureConfig(max_failures=1),
  resumes from its last checkpoint and ends bit-identical to an uninterrupted run.
- (b) The sweep CLI, interrupted by SIGINT from outside, finishes with ``--resume``:
  every trial once, the one finished before the interrupt not re-run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import runnable_sweep_base, tiny_grid_spec

from cadc_ray.runtime.checkpoint import (
    CHECKPOINT_FILE,
    FORMAT_VERSION,
    CheckpointError,
    load_checkpoint,
    save_checkpoint,
)


def _checkpoint_state(epoch: int, payload: Any = None) -> dict[str, Any]:
    """A minimal, valid checkpoint dict (REQUIRED_KEYS), optionally carrying ``payload``."""
    state: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "stage": "ttnn",
        "config": {"seed": 0},
        "versions": {"torch": str(torch.__version__)},
        "seed": 0,
        "epoch": epoch,
        "model": {"weight": torch.full((4, 3), float(epoch))},
        "optimizers": [],
        "history": [{"epoch": epoch, "loss": 0.5}],
    }
    if payload is not None:
        state["history"].append(payload)
    return state


class _TouchOnUnpickle:
    """Pickles into a call of ``Path.touch(marker)``: proof that unpickling ran code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return (Path.touch, (self.marker,))


# ---------------------------------------------------------------------------------------
# Safety: weights_only loading


def test_checkpoint_with_pickled_object_is_refused_and_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "payload-ran"
    folder = tmp_path / "evil"
    folder.mkdir()
    torch.save(_checkpoint_state(3, payload=_TouchOnUnpickle(marker)), folder / CHECKPOINT_FILE)

    with pytest.raises(CheckpointError, match="cannot be loaded with weights_only=True"):
        load_checkpoint(folder)
    assert not marker.exists()

    # The payload is live: a plain torch.load would have run it. (Guards the test itself.)
    torch.load(folder / CHECKPOINT_FILE, weights_only=False)
    assert marker.exists()


def test_checkpoint_round_trip_and_format_checks(tmp_path: Path) -> None:
    folder = tmp_path / "ok"
    save_checkpoint(folder, _checkpoint_state(2))
    state = load_checkpoint(folder)
    assert state["epoch"] == 2
    assert torch.equal(state["model"]["weight"], torch.full((4, 3), 2.0))

    with pytest.raises(CheckpointError, match="lacks"):
        save_checkpoint(tmp_path / "partial", {"epoch": 1})
    assert not (tmp_path / "partial" / CHECKPOINT_FILE).exists()

    other = _checkpoint_state(1)
    other["format_version"] = FORMAT_VERSION + 1
    torch.save(other, folder / CHECKPOINT_FILE)
    with pytest.raises(CheckpointError, match="format_version"):
        load_checkpoint(folder)


def test_checkpoint_with_the_runtime_version_stamp_loads(tmp_path: Path) -> None:
    """``software_versions()`` goes into every checkpoint: it must be weights_only-safe.

    (``torch.__version__`` is a ``TorchVersion`` object, which weights_only refuses.)
    """
    from cadc_ray.runtime.checkpoint import software_versions

    state = _checkpoint_state(4)
    state["versions"] = software_versions()
    save_checkpoint(tmp_path, state)
    loaded = load_checkpoint(tmp_path)
    assert loaded["versions"]["torch"] == str(torch.__version__)


# ---------------------------------------------------------------------------------------
# Atomic writes: simulated crashes


def test_crash_before_rename_keeps_previous_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "ckpt"
    save_checkpoint(folder, _checkpoint_state(1))

    def crash(*args: Any, **kwargs: Any) -> None:
        raise KeyboardInterrupt("simulated crash between write and rename")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(folder, _checkpoint_state(2))
    monkeypatch.undo()
    assert load_checkpoint(folder)["epoch"] == 1


def test_crash_inside_torch_save_keeps_previous_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "ckpt"
    save_checkpoint(folder, _checkpoint_state(1))
    real_save = torch.save

    def save_half_then_crash(obj: Any, target: Any, *args: Any, **kwargs: Any) -> None:
        real_save(obj, target, *args, **kwargs)
        with open(target, "r+b") as handle:  # a torn write: half the bytes
            handle.truncate(os.path.getsize(target) // 2)
        raise OSError("simulated crash mid-write (disk full)")

    monkeypatch.setattr(torch, "save", save_half_then_crash)
    with pytest.raises(OSError, match="mid-write"):
        save_checkpoint(folder, _checkpoint_state(2))
    monkeypatch.undo()
    assert load_checkpoint(folder)["epoch"] == 1


def test_torn_checkpoint_file_is_refused_not_half_read(tmp_path: Path) -> None:
    """What a non-atomic writer would leave behind must fail loudly on load."""
    folder = tmp_path / "torn"
    save_checkpoint(folder, _checkpoint_state(5))
    file = folder / CHECKPOINT_FILE
    with open(file, "r+b") as handle:
        handle.truncate(os.path.getsize(file) // 2)
    with pytest.raises(CheckpointError, match="cannot be loaded"):
        load_checkpoint(folder)


def test_crash_before_rename_keeps_previous_results_json(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cadc_ray.run import write_json_atomic

    target = tmp_path / "run" / "results.json"
    write_json_atomic(target, {"test": {"hr@10": 0.25}})

    def crash(*args: Any, **kwargs: Any) -> None:
        raise KeyboardInterrupt("simulated crash between write and rename")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        write_json_atomic(target, {"test": {"hr@10": 0.5}})
    monkeypatch.undo()
    assert json.loads(target.read_text(encoding="utf-8")) == {"test": {"hr@10": 0.25}}


_WRITER = textwrap.dedent(
    """
    import sys, torch
    from pathlib import Path
    from cadc_ray.runtime.checkpoint import FORMAT_VERSION, save_checkpoint
    from cadc_ray.run import write_json_atomic

    folder = Path(sys.argv[1])
    big = torch.arange(2_000_000, dtype=torch.float32)  # ~8 MB: a write takes a while
    epoch = 0
    while True:
        epoch += 1
        save_checkpoint(folder / "ckpt", {
            "format_version": FORMAT_VERSION, "stage": "ttnn", "config": {}, "versions": {},
            "seed": 0, "epoch": epoch, "model": {"w": big + epoch}, "optimizers": [],
            "history": [],
        })
        write_json_atomic(folder / "results.json", {"epoch": epoch, "pad": "x" * 2_000_000})
        if epoch == 1:
            print("ready", flush=True)
    """
)


def _results_epoch(folder: Path) -> int:
    try:
        return int(json.loads((folder / "results.json").read_text(encoding="utf-8"))["epoch"])
    except FileNotFoundError:
        return 0


def test_sigkill_during_repeated_writes_leaves_only_valid_files(tmp_path: Path) -> None:
    """A real crash: SIGKILL a process that rewrites a checkpoint and a results file."""
    writer = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(tmp_path)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert writer.stdout is not None
        assert writer.stdout.readline().strip() == "ready"
        # Let it get into later writes; the kill lands at an arbitrary point of one.
        deadline = time.monotonic() + 60
        while _results_epoch(tmp_path) < 3:
            assert writer.poll() is None, "the writer died on its own"
            assert time.monotonic() < deadline, "the writer made no progress in 60 s"
            time.sleep(0.02)
        writer.send_signal(signal.SIGKILL)
    finally:
        writer.kill()
        writer.wait(timeout=30)
    state = load_checkpoint(tmp_path / "ckpt")
    assert torch.equal(state["model"]["w"][:3], torch.tensor([0.0, 1.0, 2.0]) + state["epoch"])
    results = json.loads((tmp_path / "results.json").read_text(encoding="utf-8"))
    assert results["epoch"] >= 3
    assert state["epoch"] in (results["epoch"], results["epoch"] + 1)


# ---------------------------------------------------------------------------------------
# (a) A Train worker killed mid-run: FailureConfig restarts it from the last checkpoint


@pytest.mark.ray
def test_killed_train_worker_restarts_from_checkpoint_with_identical_results(
    ray_session: None, tmp_path: Path
) -> None:
    """SIGKILL the rank-0 worker once its epoch-2 checkpoint exists; the run must restart
    (max_failures=1), resume from a checkpoint and end bit-identical to an uninterrupted
    run of the same seed (here: local mode, which shares the same loop and seeds).
    """
    from conftest import (  # the same tiny stage and dashboard helpers as test_monitoring
        TinySplit,
        kill_train_worker_when,
        registered_checkpoint,
        start_in_background,
        tiny_pretrain_config,
        train_run_named,
        write_tiny_interactions,
    )

    from cadc_ray.runtime.pretrain import fit_pretrain

    num_users, num_items, epochs, kill_after_epoch = 200, 100, 5, 2
    # Enough rows for the kill to land in the run: the fused MF step trained 12,000 rows in
    # 0.02 s per epoch, so a run of that size ended before the state API had shown its
    # worker (seen 2026-12-01). With 50x the rows the test passed twice in a row alone.
    split = TinySplit(write_tiny_interactions(tmp_path / "train", 600_000, num_users, num_items))

    reference = fit_pretrain(
        tiny_pretrain_config(epochs=epochs, num_workers=0),
        split,
        num_users=num_users,
        num_items=num_items,
        run_name="reference",
        storage_path=str(tmp_path / "reference"),
    )

    run_name = f"killed-{os.getpid()}-{time.monotonic_ns()}"
    storage = tmp_path / "storage"
    stage, outcome = start_in_background(
        "killed-stage",
        lambda: fit_pretrain(
            tiny_pretrain_config(epochs=epochs, num_workers=1, max_failures=1),
            split,
            num_users=num_users,
            num_items=num_items,
            run_name=run_name,
            storage_path=str(storage),
        ),
    )
    # The kill lands right after Train has registered the epoch-2 checkpoint, early in
    # epoch 3.
    deadline = time.monotonic() + 240
    kill_after = f"epoch_{kill_after_epoch:06d}"

    def epoch_2_registered() -> bool | None:
        latest = registered_checkpoint(storage / run_name)
        return True if latest is not None and latest.name >= kill_after else None

    killed = kill_train_worker_when(
        stage, lambda run: run["name"] == run_name, epoch_2_registered, deadline
    )
    stage.join(timeout=max(deadline - time.monotonic(), 1))
    assert not stage.is_alive(), "the restarted run did not finish in time"
    if "error" in outcome:
        raise outcome["error"]
    assert killed is not None, "the run finished before the worker could be killed"
    killed_pid = killed[0]

    run = train_run_named(run_name)
    attempts = run["attempts"]
    assert run["status"] == "FINISHED"
    assert len(attempts) == 2, [attempt["status"] for attempt in attempts]
    statuses = {attempt["workers"][0]["pid"]: attempt["status"] for attempt in attempts}
    assert statuses.pop(killed_pid) in ("ERRORED", "ABORTED")
    assert list(statuses.values()) == ["FINISHED"]  # a new worker process finished it

    result = outcome["result"]
    assert result.epochs == epochs
    assert [h["epoch"] for h in result.history] == list(range(1, epochs + 1))
    assert [h["loss"] for h in result.history] == [h["loss"] for h in reference.history]
    np.testing.assert_array_equal(result.tables.user, reference.tables.user)
    np.testing.assert_array_equal(result.tables.item, reference.tables.item)


TTNN_EPOCHS = 6


def _joint_run_config(tmp_path: Path, name: str, **resources: Any) -> Any:
    """CADC on synthetic data whose TTNN epochs (about 1.5 s apart in a worker group,
    validation and checkpoint included) leave time for a kill to land in one."""
    from cadc_ray.config import ExperimentConfig, absolute_paths, from_dict

    return absolute_paths(
        from_dict(
            ExperimentConfig,
            {
                "name": name,
                "method": "cadc",
                "output_root": str(tmp_path / "runs"),
                "data": {
                    "dataset": "synthetic",
                    "prepared_dir": str(tmp_path / "prepared"),
                    "filter_ratio": 2,
                    "synthetic": {"num_users": 1500, "num_items": 800, "num_interactions": 60_000},
                },
                "pretrain": {"embedding_dim": 7, "epochs": 3, "batch_size": 512},
                "model": {"embedding_dim": 8, "tower_hidden": [16], "output_dim": 8},
                "train": {
                    "epochs": TTNN_EPOCHS,
                    "batch_size": 256,
                    "early_stopping_patience": TTNN_EPOCHS,
                },
                "resources": {"num_workers": 1, "use_gpu": "no", **resources},
            },
            "<test>",
        )
    )


@pytest.mark.ray
def test_killed_worker_of_a_joint_run_resumes_the_ttnn_with_its_checkpointed_teacher(
    ray_session: None, tmp_path: Path
) -> None:
    """Both stages in one worker group (``runtime.joint``): SIGKILL the worker once a
    TTNN checkpoint exists. The restarted run resumes the TTNN with the teacher
    that checkpoint carries (no second pretraining: the teacher's history, timings included,
    is the checkpoint's) and ends with the numbers of an uninterrupted run."""
    from conftest import (
        kill_train_worker_when,
        registered_checkpoint,
        start_in_background,
        train_run_named,
    )

    from cadc_ray import run
    from cadc_ray.runtime.joint import RUN_NAME, TEACHER_KEY

    reference = run.run_experiment(
        _joint_run_config(tmp_path, "reference"), run_dir=tmp_path / "reference"
    )
    run_dir = tmp_path / "killed"
    config = _joint_run_config(tmp_path, "killed", max_failures=1)
    started = time.time()
    stage, outcome = start_in_background(
        "killed-joint-run", lambda: run.run_experiment(config, run_dir=run_dir)
    )
    deadline = time.monotonic() + 300
    # The state API shows the worker seconds after it starts (11.7 s into one run, with
    # the TTNN at epoch 2): kill at the first TTNN checkpoint Train has registered from
    # then on (a folder still being copied holds a truncated file), while at least two
    # epochs are left.
    folder = run_dir / "ray_train" / RUN_NAME
    killed = kill_train_worker_when(
        stage,
        lambda run: run["name"] == RUN_NAME and run["start_time_ns"] / 1e9 >= started - 1,
        lambda: registered_checkpoint(folder, "ttnn_"),
        deadline,
    )
    checkpointed_teacher = None
    if killed is not None:
        checkpointed_teacher = load_checkpoint(killed[1])[TEACHER_KEY]
    stage.join(timeout=max(deadline - time.monotonic(), 1))
    assert not stage.is_alive(), "the restarted run did not finish in time"
    if "error" in outcome:
        raise outcome["error"]
    assert killed is not None and checkpointed_teacher is not None, (
        "the run finished before the worker was killed"
    )
    killed_after = int(killed[1].name.removeprefix("ttnn_epoch_"))
    assert 1 <= killed_after <= TTNN_EPOCHS - 2, killed_after

    result = outcome["result"]
    assert result["one_worker_group"] and not reference["one_worker_group"]
    newest = train_run_named(RUN_NAME)
    assert len(newest["attempts"]) == 2, [attempt["status"] for attempt in newest["attempts"]]
    # The teacher was not trained again: its whole history, epoch timings included, is the
    # one the checkpoint carried.
    assert result["pretrain_history"] == checkpointed_teacher["history"]
    assert [h["loss"] for h in result["pretrain_history"]] == [
        h["loss"] for h in reference["pretrain_history"]
    ]
    assert [h["epoch"] for h in result["history"]] == list(range(1, TTNN_EPOCHS + 1))
    assert [h["loss"] for h in result["history"]] == [h["loss"] for h in reference["history"]]
    assert result["test"] == reference["test"] and result["val"] == reference["val"]
    assert result["teacher_test_percent"] == reference["teacher_test_percent"]


# ---------------------------------------------------------------------------------------
# (b) The sweep CLI interrupted by a signal resumes with --resume


SWEEP_SPEC: dict[str, Any] = tiny_grid_spec(
    "interrupted",
    runnable_sweep_base(),
    objectives=[{"metric": "val_hr@10", "mode": "max"}],
    max_concurrent_trials=1,  # one at a time: the signal lands between trials
    trial_resources={"num_workers": 0, "cpus_per_worker": 1, "torch_threads": 1},
)


def _sweep_command(spec_file: Path, *extra: str) -> list[str]:
    import ray

    # Join the session's Ray instead of starting a second one (saves its start-up).
    address = ray.get_runtime_context().gcs_address
    return [sys.executable, "-m", "cadc_ray.sweep", str(spec_file), "--address", address, *extra]


def _results_rows(output_dir: Path) -> list[dict[str, str]]:
    import csv

    with (output_dir / "results.csv").open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.ray
def test_sweep_cli_interrupted_by_sigint_resumes_and_runs_each_trial_once(
    ray_session: None, tmp_path: Path
) -> None:
    import yaml

    output_dir = tmp_path / "sweep"
    spec = {**SWEEP_SPEC, "output_dir": str(output_dir)}
    spec["base_config"] = {**SWEEP_SPEC["base_config"], "output_root": str(tmp_path / "data")}
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(spec), encoding="utf-8")

    driver = subprocess.Popen(
        _sweep_command(spec_file),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=tmp_path,
    )
    lines: list[str] = []
    interrupted_after = None
    assert driver.stdout is not None
    for line in driver.stdout:  # ends when the driver exits
        lines.append(line)
        if interrupted_after is None and " finished (1 done" in line:
            interrupted_after = line.split("trial ", 1)[1].split(" ", 1)[0]
            driver.send_signal(signal.SIGINT)  # Ctrl-C from outside the process
    first_status = driver.wait(timeout=60)
    log = "".join(lines)
    assert interrupted_after is not None, log[-3000:]
    assert first_status == 130, log[-3000:]  # interrupted: cli.EXIT_INTERRUPTED
    assert "--resume" in log.split("interrupted:", 1)[1], log[-3000:]
    first_rows = {row["trial_id"]: row for row in _results_rows(output_dir)}
    assert first_rows[interrupted_after]["status"] == "finished"
    # The trial that had not started yet may be absent from the interrupted table.
    assert [row["status"] for row in first_rows.values()].count("finished") == 1
    assert {row["status"] for row in first_rows.values()} <= {"finished", "incomplete"}

    resumed = subprocess.run(
        _sweep_command(spec_file, "--resume"),
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    rows = _results_rows(output_dir)
    trial_ids = [row["trial_id"] for row in rows]
    assert len(trial_ids) == len(set(trial_ids)) == 2  # each trial once
    assert set(first_rows) <= set(trial_ids)
    assert [row["status"] for row in rows] == ["finished", "finished"]
    finished_before = {row["trial_id"]: row for row in rows}[interrupted_after]
    # Not re-run: the trial finished before the interrupt keeps its exact timing.
    assert finished_before["train_seconds"] == first_rows[interrupted_after]["train_seconds"]
    # Only the unfinished trial ran again: one "finished" progress line in the resume.
    # (cadc_ray's progress lines go to stdout since the console change; warnings to stderr.)
    resumed_log = resumed.stdout + resumed.stderr
    assert resumed_log.count(" finished (") == 1, resumed_log[-3000:]
