"""``python -m cadc_ray.run`` end to end on a tiny dataset: results.json has every field."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import finished_tasks_named

from cadc_ray import run

pytestmark = pytest.mark.ray

REQUIRED_FIELDS = {
    "method",
    "method_label",
    "dataset",
    "filter_ratio",
    "integration",
    "embedding_dim",
    "seed",
    "test",
    "val",
    "best_epoch",
    "epochs_run",
    "early_stopped",
    "pretrain_seconds",
    "train_seconds",
    "train_interactions",
    "trainable_parameters",
    "frozen_parameters",
    "config",
    "versions",
    "time_order",
    "pretrain_reused",
    "teacher_test_percent",
    "teacher_val_percent",
    "pretrain_best_epoch",
    "pretrain_early_stopped",
    "pretrain_eval_seconds",
}


def _write_untimed_csv(path: Path) -> None:
    """A generic interaction file without timestamps (row order is the time order)."""
    rng = np.random.default_rng(3)
    lines = ["user,item"]
    for user in range(120):
        taste = rng.integers(0, 4)  # four taste groups of 20 items each, plus noise
        for item in rng.choice(20, size=12, replace=False) + 20 * taste:
            lines.append(f"u{user},i{item}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _write_tiny_config(tmp_path: Path, name: str, epochs: int) -> Path:
    """A CADC experiment on the untimed CSV, small enough for a local-mode run."""
    data_file = tmp_path / "interactions.csv"
    _write_untimed_csv(data_file)
    config = tmp_path / f"{name}.yaml"
    config.write_text(
        f"""
name: {name}
method: cadc
output_root: {tmp_path / "runs"}
data:
  dataset: generic
  path: {data_file}
  filter_ratio: 2
  generic: {{user: user, item: item, timestamp: null}}
pretrain: {{embedding_dim: 7, epochs: {epochs}, batch_size: 256}}
model: {{embedding_dim: 8, tower_hidden: [16], output_dim: 8}}
train: {{epochs: {epochs}, batch_size: 128}}
resources: {{num_workers: 0, use_gpu: "no"}}
""",
        encoding="utf-8",
    )
    return config


def test_run_writes_results_json_with_every_field(
    ray_session: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _write_tiny_config(tmp_path, "tiny-e2e", epochs=3)
    run_dir = tmp_path / "out"
    assert (
        run.main([str(config), "--set", "train.learning_rate=0.003", "--output", str(run_dir)]) == 0
    )
    results = json.loads((run_dir / run.RESULTS_FILE).read_text(encoding="utf-8"))
    assert set(results) >= REQUIRED_FIELDS, REQUIRED_FIELDS - set(results)
    assert results["method"] == "cadc" and results["method_label"] == "CADC"
    assert results["integration"] == "init_frz"  # "auto" resolved
    assert results["dataset"] == "generic" and results["filter_ratio"] == 2.0
    assert results["config"]["train"]["learning_rate"] == 0.003  # the --set override
    assert set(results["test"]) == {"hr@10", "ndcg@10"}
    assert all(0.0 <= value <= 1.0 for value in results["test"].values())
    assert results["test_percent"]["hr@10"] == pytest.approx(
        100 * results["test"]["hr@10"], abs=1e-4
    )
    assert results["epochs_run"] == 3 and 1 <= results["best_epoch"] <= 3
    # pretrain.eval_every 0 (the default): the teacher ran every epoch, unvalidated.
    assert results["pretrain_epochs"] == 3 and results["pretrain_best_epoch"] == 0
    assert not any("val_hr@10" in epoch for epoch in results["pretrain_history"])
    assert results["pretrain_seconds"] > 0 and results["train_seconds"] > 0
    assert results["frozen_parameters"] == (120 + results["num_items"]) * 8
    # D_full of 120 users x 12 items minus 2 held out per user, halved by the sample.
    assert 0 < results["train_interactions"] < 120 * 10
    assert "no timestamps" in results["time_order"]
    assert set(results["versions"]) >= {"cadc_ray", "ray", "torch"}
    assert not list(run_dir.glob(".*.tmp-*"))  # the atomic write left no temp file
    printed = capsys.readouterr().out
    assert "CADC on generic" in printed and "test: hr@10" in printed


def test_pretrain_cache_shares_one_teacher_and_changes_no_metric(
    ray_session: None, tmp_path: Path
) -> None:
    """Table 2's techniques share one MF teacher: the reused run equals a fresh one."""
    from cadc_ray.config import load_config
    from cadc_ray.pretrain_key import pretrain_key
    from cadc_ray.runtime.pretrain import PretrainResult

    config_file = _write_tiny_config(tmp_path, "tiny-cache", epochs=2)
    teacher_run = load_config(config_file, ["model.integration=init_frz"])
    linear_run = load_config(config_file, ["model.integration=linear"])
    cache: dict[str, PretrainResult] = {}
    first = run.run_experiment(teacher_run, run_dir=tmp_path / "first", pretrain_cache=cache)
    assert list(cache) == [pretrain_key(teacher_run)] and not first["pretrain_reused"]
    reused = run.run_experiment(linear_run, run_dir=tmp_path / "reused", pretrain_cache=cache)
    assert reused["pretrain_reused"] and len(cache) == 1
    # The reused teacher's stage ran in no place of this run (num_workers 0 on the suite's
    # shared Ray: Train's local mode in a Ray task).
    assert first["stage_placement"] == {"pretrain": "ray_task", "ttnn": "ray_task"}
    assert reused["stage_placement"] == {"ttnn": "ray_task"}
    assert reused["pretrain_seconds"] == first["pretrain_seconds"]
    assert set(first["teacher_test_percent"]) == {"hr@10", "ndcg@10"}
    assert reused["teacher_test_percent"] == first["teacher_test_percent"]  # one teacher
    fresh = run.run_experiment(linear_run, run_dir=tmp_path / "fresh")
    assert not fresh["pretrain_reused"]
    assert reused["test"] == fresh["test"] and reused["val"] == fresh["val"]


def test_where_the_stages_train_on_a_ray_it_did_not_start_changes_no_number(
    ray_session: None, tmp_path: Path
) -> None:
    """On a Ray the command did not start (a cluster; here the suite's shared session):

    - one CPU worker trains in Train's local mode inside a Ray task per stage, not in a
      worker group (docs/scale.md, "Fixed cost per stage");
    - stages that keep worker groups (here ``in_process: never``) train in one group for
      both (``resources.share_worker_group: auto``, ``runtime.joint``), whose TTNN
      checkpoints carry the teacher, or in one group each (``never``);

    and all three give the same numbers, the teacher validated on every epoch included
    (``pretrain.eval_every``: the workers read the split's validation data themselves)."""
    from cadc_ray.runtime.checkpoint import load_checkpoint
    from cadc_ray.runtime.joint import RUN_NAME, TEACHER_KEY

    config = _write_tiny_config(tmp_path, "tiny-placement", epochs=3)
    placements = {
        "groups": ("never", "never"),  # (resources.in_process, resources.share_worker_group)
        "one_group": ("never", "auto"),
        "tasks": ("auto", "auto"),
    }
    results: dict[str, dict[str, Any]] = {}
    for name, (in_process, share) in placements.items():
        run_dir = tmp_path / name
        argv = [str(config), "--output", str(run_dir), "--set", "resources.num_workers=1"]
        argv += ["--set", f"resources.in_process={in_process}", "--set", "pretrain.eval_every=1"]
        assert run.main([*argv, "--set", f"resources.share_worker_group={share}"]) == 0
        results[name] = json.loads((run_dir / run.RESULTS_FILE).read_text("utf-8"))
    groups, one_group, tasks = results["groups"], results["one_group"], results["tasks"]
    for result in (groups, one_group):
        assert result["stage_placement"] == {"pretrain": "worker_group", "ttnn": "worker_group"}
    assert tasks["stage_placement"] == {"pretrain": "ray_task", "ttnn": "ray_task"}
    assert [result["one_worker_group"] for result in (groups, one_group, tasks)] == [
        False,
        True,
        False,
    ]
    assert not any(result["in_process"] for result in results.values())
    # Same seed, same numbers: the loop, the rows and the generators do not depend on
    # where the loop runs, nor on whether the teacher came through the object store.
    for name, result in results.items():
        assert result["test"] == groups["test"] and result["val"] == groups["val"], name
        assert result["teacher_test_percent"] == groups["teacher_test_percent"], name
        for history in ("pretrain_history", "history"):
            assert [epoch["loss"] for epoch in result[history]] == [
                epoch["loss"] for epoch in groups[history]
            ], (name, history)
        assert result["best_epoch"] == groups["best_epoch"] and result["epochs_run"] == 3
        assert [epoch["val_hr@10"] for epoch in result["pretrain_history"]] == [
            epoch["val_hr@10"] for epoch in groups["pretrain_history"]
        ], name
        assert result["pretrain_best_epoch"] == groups["pretrain_best_epoch"], name
    assert 1 <= groups["pretrain_best_epoch"] <= 3
    # One Train run for both stages; its last checkpoint is the TTNN's and holds the teacher.
    last = Path(one_group["checkpoint_path"])
    assert (last.parent.name, last.name) == (RUN_NAME, "ttnn_epoch_000003")
    teacher = load_checkpoint(last)[TEACHER_KEY]
    assert [epoch["loss"] for epoch in teacher["history"]] == [
        epoch["loss"] for epoch in one_group["pretrain_history"]
    ]
    assert tuple(teacher["user"].shape) == (
        one_group["num_users"],
        7 + 1,
    )  # pretrain d=7, plus the bias
    # Each stage of the "tasks" run was one Ray task, named after the experiment and the
    # Train run.
    names = ("tiny-placement/pretrain", "tiny-placement/ttnn")
    assert finished_tasks_named(names, [1, 1]) == [1, 1]


def test_both_stages_streaming_in_one_worker_group_give_the_numbers_of_two_groups(
    ray_session: None, tmp_path: Path
) -> None:
    """Streamed stages on a Ray the command did not start keep worker groups; in one group
    (``runtime.joint``) each stage streams its own dataset (D_full, then the sample) with
    the same seeds as in a group of its own: one worker's stream keeps its order, so the
    numbers are equal."""
    config = _write_tiny_config(tmp_path, "tiny-stream", epochs=2)
    results: dict[str, dict[str, Any]] = {}
    for share in ("never", "auto"):
        run_dir = tmp_path / share
        argv = [str(config), "--output", str(run_dir), "--set", "resources.num_workers=1"]
        argv += ["--set", "resources.ingest=stream"]
        assert run.main([*argv, "--set", f"resources.share_worker_group={share}"]) == 0
        results[share] = json.loads((run_dir / run.RESULTS_FILE).read_text("utf-8"))
    apart, together = results["never"], results["auto"]
    assert (apart["one_worker_group"], together["one_worker_group"]) == (False, True)
    assert together["stage_placement"] == {"pretrain": "worker_group", "ttnn": "worker_group"}
    assert together["test"] == apart["test"] and together["val"] == apart["val"]
    for history in ("pretrain_history", "history"):
        assert [epoch["loss"] for epoch in together[history]] == [
            epoch["loss"] for epoch in apart[history]
        ], history
