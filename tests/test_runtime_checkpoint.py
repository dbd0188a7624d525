"""Checkpoint files: atomic, self-describing, loadable with weights_only=True."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from cadc_ray.config import ExperimentConfig, to_dict
from cadc_ray.runtime.checkpoint import (
    CHECKPOINT_FILE,
    CheckpointError,
    capture_rng_state,
    check_resumable,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
    software_versions,
)


def _state(epoch: int = 3) -> dict[str, object]:
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    model(torch.ones(3, 4)).sum().backward()
    optimizer.step()
    return {
        "format_version": 1,
        "stage": "ttnn",
        "config": to_dict(ExperimentConfig(seed=7)),
        "versions": software_versions(),
        "seed": 7,
        "epoch": epoch,
        "model": model.state_dict(),
        "optimizers": {"adam": optimizer.state_dict()},
        "early_stopping": {"best_value": 0.25, "best_epoch": 2, "epochs_without_improvement": 1},
        "history": [{"epoch": 1, "loss": 0.69}],
        "rng": capture_rng_state(),
    }


def test_round_trip_with_weights_only(tmp_path: Path) -> None:
    state = _state()
    path = save_checkpoint(tmp_path / "ckpt", state)
    assert path == tmp_path / "ckpt" / CHECKPOINT_FILE
    assert [p.name for p in path.parent.iterdir()] == [CHECKPOINT_FILE]  # no temp file left
    # The raw file itself loads with weights_only=True (no pickled objects).
    raw = torch.load(path, weights_only=True)
    assert raw["config"]["seed"] == 7
    loaded = load_checkpoint(tmp_path / "ckpt")
    assert loaded["seed"] == 7 and loaded["epoch"] == 3
    assert loaded["versions"]["torch"] == torch.__version__
    assert set(loaded["versions"]) >= {"cadc_ray", "ray", "torch"}
    assert loaded["config"] == to_dict(ExperimentConfig(seed=7))
    assert loaded["early_stopping"]["best_epoch"] == 2
    for name, tensor in state["model"].items():  # type: ignore[attr-defined]
        assert torch.equal(loaded["model"][name], tensor)
    restored = torch.optim.Adam(torch.nn.Linear(4, 2).parameters(), lr=0.01)
    restored.load_state_dict(loaded["optimizers"]["adam"])
    assert int(restored.state_dict()["state"][0]["step"]) == 1


def test_rng_state_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    state = _state()
    save_checkpoint(tmp_path, state)
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(99)
    np.random.seed(99)
    random.seed(99)
    restore_rng_state(load_checkpoint(tmp_path)["rng"])
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1])
    assert random.random() == expected[2]


def test_missing_and_foreign_files_fail_clearly(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="checkpoint file not found"):
        load_checkpoint(tmp_path)
    torch.save({"format_version": 99}, tmp_path / CHECKPOINT_FILE)
    with pytest.raises(CheckpointError, match="format_version 99"):
        load_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="lacks"):
        save_checkpoint(tmp_path / "x", {"format_version": 1})


def test_pickled_objects_are_refused(tmp_path: Path) -> None:
    state = _state()
    state["history"] = [ExperimentConfig()]  # an arbitrary class: weights_only must refuse it
    torch.save(state, tmp_path / CHECKPOINT_FILE)
    with pytest.raises(CheckpointError, match="weights_only=True"):
        load_checkpoint(tmp_path)


def test_resume_refuses_another_config_or_stage() -> None:
    state = _state()
    check_resumable(state, "ttnn", to_dict(ExperimentConfig(seed=7)))
    with pytest.raises(CheckpointError, match=r"another config \(sections \['seed'\]"):
        check_resumable(state, "ttnn", to_dict(ExperimentConfig(seed=8)))
    with pytest.raises(CheckpointError, match="stage 'ttnn' cannot resume 'pretrain'"):
        check_resumable(state, "pretrain", to_dict(ExperimentConfig(seed=7)))
