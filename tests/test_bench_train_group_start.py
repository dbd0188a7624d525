"""``scripts/bench_train_group_start.py``: what it reads from Ray's logs, its summary and its
argument checks (the benchmark starts a two-node cluster and is run by hand, docs/results.md)."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pytest
from conftest import load_script, usage_error


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load_script("bench_train_group_start")


def test_new_actor_names_reads_the_actor_line_of_new_worker_logs_only(
    bench: ModuleType, tmp_path: Path
) -> None:
    (tmp_path / "worker-aa-01000000-1.out").write_text(
        ":job_id:01000000\n:actor_name:TrainController\nRequesting resources\n"
    )
    (tmp_path / "worker-bb-01000000-2.out").write_text(
        ":job_id:01000000\n:actor_name:RayTrainWorker\n"
    )
    (tmp_path / "worker-cc-01000000-3.out").write_text(":job_id:01000000\n")
    (tmp_path / "worker-dd-01000000-4.out").write_text(":actor_name:RayTrainWorker\n")
    (tmp_path / "worker-ee-01000000-5.err").write_text(":actor_name:NotAnOutLog\n")
    (tmp_path / "raylet.out").write_text(":actor_name:NotAWorker\n")

    assert bench.new_actor_names(tmp_path, {"worker-aa-01000000-1.out"}) == [
        "(task or idle worker)",
        "RayTrainWorker",
        "RayTrainWorker",
    ]
    assert bench.new_actor_names(tmp_path, set())[-1] == "TrainController"


def test_summary_groups_by_variant_and_workers_and_skips_runs_without_the_key(
    bench: ModuleType,
) -> None:
    runs = [
        {"variant": "empty", "workers": 2, "to_loop_seconds": 12.0},
        {"variant": "empty", "workers": 1, "to_loop_seconds": 5.0},
        {"variant": "empty", "workers": 2, "to_loop_seconds": 10.0},
        {"variant": "empty", "workers": 2, "to_loop_seconds": 11.004},
        {"variant": "product_one_group", "workers": 2, "fixed_seconds_per_stage": 6.0},
    ]
    assert bench.summary(runs, "to_loop_seconds") == {
        "empty 2": {"runs": 3, "median": 11.0, "min": 10.0, "max": 12.0},
        "empty 1": {"runs": 1, "median": 5.0, "min": 5.0, "max": 5.0},
    }
    assert list(bench.summary(runs, "fixed_seconds_per_stage")) == ["product_one_group 2"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--workers", "3"], "--workers 3 needs more than --node-cpus 2"),
        (["--repeats", "0"], "must be >= 1"),
    ],
)
def test_bad_arguments_are_refused_before_any_cluster_starts(
    bench: ModuleType, argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert message in usage_error(bench.parse_args, argv, capsys)


def test_the_product_runs_need_movielens_100k(
    bench: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--with-product", "--data", str(tmp_path), "--output", str(tmp_path / "b.json")]
    assert f"{tmp_path} has no u.data" in usage_error(bench.main, argv, capsys)
    assert not (tmp_path / "b.json").exists()
