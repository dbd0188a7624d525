"""``scripts/bench_cluster_placement.py``'s arithmetic and input checks (the benchmark itself
starts a two-node cluster and is run by hand, docs/results.md)."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import load_script, usage_error


def test_a_stages_fixed_cost_is_its_wall_time_minus_its_loop_and_evaluation() -> None:
    bench = load_script("bench_cluster_placement")
    costs = bench.stage_costs(
        {
            "pretrain_seconds": 10.0,
            "pretrain_loop_seconds": 6.5,
            "train_seconds": 8.0,
            "train_loop_seconds": 3.0,
            "train_eval_seconds": 1.5,
        }
    )
    assert costs["pretrain"] == {
        "seconds": 10.0,
        "loop_seconds": 6.5,
        "eval_seconds": 0.0,
        "fixed_seconds": 3.5,
    }
    assert costs["ttnn"]["fixed_seconds"] == 3.5


def test_a_missing_dataset_is_refused_before_any_cluster_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bench = load_script("bench_cluster_placement")
    argv = ["--data", str(tmp_path / "nowhere"), "--output", str(tmp_path / "b.json")]
    assert f"{tmp_path / 'nowhere'} has no u.data" in usage_error(bench.main, argv, capsys)
    assert not (tmp_path / "b.json").exists()
