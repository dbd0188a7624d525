"""Both stages in one worker group (``runtime.joint``): when, what resumes, what is carried.

The run itself is tested end to end in test_run_end_to_end (same numbers as the stages
apart) and test_fault_tolerance (a killed worker resumes the TTNN with its teacher).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cadc_ray.config import ExperimentConfig, ResourcesConfig
from cadc_ray.runtime.checkpoint import (
    FORMAT_VERSION,
    CheckpointError,
    load_checkpoint,
    save_checkpoint,
)
from cadc_ray.runtime.joint import (
    TEACHER_KEY,
    resume_points,
    teacher_entry,
    teacher_output,
)
from cadc_ray.runtime.pretrain import exported_tables
from cadc_ray.runtime.session import StagePlacement, share_worker_group


def _mf_output() -> dict[str, Any]:
    """What ``runtime.pretrain.train_mf_stage`` returns, small."""
    generator = np.random.default_rng(0)
    return {
        "user": generator.standard_normal((5, 4)).astype(np.float32),
        "item": generator.standard_normal((3, 4)).astype(np.float32),
        "pretrainer": "mf",
        "global_bias": -0.25,
        "history": [{"epoch": 1, "loss": 0.69, "epoch_seconds": 0.01}],
        "loop_seconds": 0.01,
        "epochs": 1,
    }


def test_a_ttnn_checkpoint_carries_the_teacher_through_a_weights_only_load(
    tmp_path: Path,
) -> None:
    output = _mf_output()
    state = {
        "format_version": FORMAT_VERSION,
        "stage": "ttnn",
        "config": {},
        "versions": {},
        "seed": 0,
        "epoch": 2,
        "model": {},
        "optimizers": {},
        "history": [],
        TEACHER_KEY: teacher_entry(output),
    }
    save_checkpoint(tmp_path, state)
    back = teacher_output(load_checkpoint(tmp_path)[TEACHER_KEY])  # weights_only=True
    assert set(back) == set(output)
    for key in ("user", "item"):
        np.testing.assert_array_equal(back[key], output[key])
        assert back[key].dtype == np.float32
    assert {key: back[key] for key in back if key not in ("user", "item")} == {
        key: output[key] for key in output if key not in ("user", "item")
    }
    tables = exported_tables(back)
    assert (tables.pretrainer, tables.global_bias) == ("mf", -0.25)
    np.testing.assert_array_equal(tables.user, output["user"])


def test_resume_points_route_a_joint_runs_checkpoint_to_its_stage() -> None:
    assert resume_points(None) == (None, None)
    pretrain = {"stage": "pretrain", "epoch": 2}
    assert resume_points(pretrain) == (pretrain, None)  # MF resumes, the TTNN starts fresh
    ttnn = {"stage": "ttnn", "epoch": 1, TEACHER_KEY: teacher_entry(_mf_output())}
    assert resume_points(ttnn) == (None, ttnn)  # MF is done: its teacher is in the state
    with pytest.raises(CheckpointError, match="lacks its teacher"):
        resume_points({"stage": "ttnn", "epoch": 1})
    with pytest.raises(CheckpointError, match="stage 'als'"):
        resume_points({"stage": "als"})


def _planned(**resources: Any) -> tuple[ExperimentConfig, StagePlacement]:
    return ExperimentConfig(resources=ResourcesConfig(**resources)), "worker_group"


def test_stages_share_a_worker_group_only_when_both_would_start_the_same_one() -> None:
    config = ExperimentConfig(resources=ResourcesConfig(num_workers=2))
    group = _planned(num_workers=2)
    assert share_worker_group(config, group, group)
    # Asked not to; or a teacher that is not trained by Train (ALS is one Ray task) or
    # none at all.
    never = ExperimentConfig(resources=ResourcesConfig(num_workers=2, share_worker_group="never"))
    assert not share_worker_group(never, group, group)
    for method in ("cadc_als", "random"):
        other = ExperimentConfig(method=method, resources=config.resources)
        assert not share_worker_group(other, group, group), method
    assert share_worker_group(
        ExperimentConfig(method="cadc_mlp", resources=config.resources), group, group
    )
    # A stage that does not start a worker group (local mode in a task or this process),
    # or groups of different shapes.
    task: tuple[ExperimentConfig, StagePlacement] = (
        ExperimentConfig(resources=ResourcesConfig(num_workers=0)),
        "ray_task",
    )
    assert not share_worker_group(config, group, task)
    assert not share_worker_group(config, task, group)
    assert not share_worker_group(config, group, _planned(num_workers=3))


def test_stages_stream_under_their_own_dataset_names() -> None:
    from cadc_ray.runtime.ingest import TrainingInput, combined_training_inputs

    split = object()
    streamed = TrainingInput({"pretrain": "D_full"}, split, {"ingest": "stream"})  # type: ignore[arg-type]
    held = TrainingInput(None, None, {"ingest": "memory"})
    combined = combined_training_inputs({"pretrain": streamed, "ttnn": held})
    assert (combined.datasets, combined.dataset_config, combined.loop_entries) == (
        {"pretrain": "D_full"},
        split,
        {},
    )
    both = combined_training_inputs(
        {"pretrain": streamed, "ttnn": TrainingInput({"ttnn": "D_sub"}, split)}  # type: ignore[arg-type]
    )
    assert both.datasets == {"pretrain": "D_full", "ttnn": "D_sub"}
    assert combined_training_inputs({"pretrain": held, "ttnn": held}).datasets is None
    with pytest.raises(ValueError, match=r"\['pretrain'\]"):
        combined_training_inputs({"a": streamed, "b": streamed})
