"""``scripts/bench_scale.py``: arguments checked before any work, the summaries on hand-made
numbers, and the Ray-free parts (baseline split, bounded evaluation) on tiny synthetic data.

The Ray stages are not run here: a worker group costs 15-20 s to start, and the script
trains 2 stages per (workers, ingest); the stages themselves are covered by the runtime tests.
"""

from __future__ import annotations

import math
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import load_script, usage_error

from cadc_ray.config import DataConfig, SyntheticConfig
from cadc_ray.data import Manifest, SplitPaths, prepare_dataset
from cadc_ray.data.known import open_known_index


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    return load_script("bench_scale")


# ---------------------------------------------------------------------------------------
# Arguments


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--rows", "many"], "is not a number of rows"),
        (["--rows", "12345.5"], "is not a whole number of rows"),
        (["--rows", "inf"], "is not a whole number of rows"),
        (["--rows", "100"], "at least 10,000 rows"),
        (["--rows", "1e6", "1e6"], "--rows: [1000000, 1000000] repeats a value"),
        (["--workers", "-1"], "must be >= 0 (0: in-process)"),
        (["--workers", "1", "1"], "--workers: [1, 1] repeats a value"),
        (["--ingest", "disk"], "invalid choice: 'disk'"),
        (["--eval-users", "-1"], "--eval-users: must be >= 0"),
        (["--mf-epochs", "0"], "must be >= 1"),
        (["--work-dir", "/nonexistent/bench"], "is not an existing folder"),
        (
            ["--rows", "1e6", "--catalogue", "400000", "100"],
            "400,000 users need at least 1,200,000",
        ),
        (["--catalogue", "1000", "5"], "--catalogue: 5 items; at least 6"),
        (["--catalogue", "1000"], "expected 2 arguments"),
        (["--object-store-mib", "0"], "must be >= 1"),
    ],
)
def test_bad_arguments_fail_with_a_message(
    bench: ModuleType, argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert message in usage_error(bench.parse_args, argv, capsys)


def test_output_that_is_a_folder_is_refused(
    bench: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        bench.parse_args(["--output", str(tmp_path)])
    assert "is a folder; name the JSON file" in capsys.readouterr().err


def test_arguments_parse_exponents_and_sort(bench: ModuleType) -> None:
    args = bench.parse_args(["--rows", "1e7", "2e4", "--workers", "2", "1"])
    assert args.rows == [20_000, 10_000_000]
    assert args.workers == [1, 2]
    assert args.ingest == ["memory", "stream"]  # both by default


def test_experiment_config_is_a_valid_cadc_config(bench: ModuleType, tmp_path: Path) -> None:
    args = bench.parse_args(["--mf-dim", "31", "--ttnn-epochs", "1"])
    config = bench.experiment_config(20_000, 2, "stream", tmp_path, args)
    assert config.method == "cadc"
    assert config.model.embedding_dim == 32  # the teacher's rows: d + 1 (bias)
    assert config.resources.num_workers == 2
    assert config.resources.ingest == "stream"
    assert config.data.synthetic.num_users == 1_000  # the floor of bench_data's shapes
    assert config.data.prepared_dir == str(tmp_path / "synthetic-20000")


def test_a_fixed_catalogue_keeps_users_and_items_at_every_size(bench: ModuleType) -> None:
    args = bench.parse_args(["--rows", "1e5", "1e7", "--catalogue", "20000", "3000"])
    shapes = [bench.synthetic_shape(rows, args.catalogue) for rows in args.rows]
    assert [(s["num_users"], s["num_items"]) for s in shapes] == [(20_000, 3_000)] * 2
    assert [s["num_interactions"] for s in shapes] == [100_000, 10_000_000]
    grown = bench.synthetic_shape(10_000_000, None)  # the default grows with the rows
    assert (grown["num_users"], grown["num_items"]) == (200_000, 20_000)


# ---------------------------------------------------------------------------------------
# Summaries on hand-made numbers


def test_loop_rows_per_second_weights_epochs_by_their_seconds(bench: ModuleType) -> None:
    history = [
        {"samples_per_second": 100.0, "epoch_seconds": 2.0, "peak_rss_mib": 50.0},
        {"samples_per_second": 400.0, "epoch_seconds": 1.0, "peak_rss_mib": 70.0},
    ]
    # 200 + 400 rows in 3 s, not the mean of the two rates (250).
    assert bench.loop_rows_per_second(history) == pytest.approx(200.0)
    assert bench.peak_worker_rss_mib(history) == 70.0
    assert bench.peak_worker_rss_mib([{"samples_per_second": 1.0, "epoch_seconds": 1.0}]) is None


def test_fixed_cost_is_the_intercept_of_seconds_against_rows(bench: ModuleType) -> None:
    # 5 s fixed, then 100,000 rows/s.
    points = [(rows, 5.0 + rows / 1e5) for rows in (10**6, 10**7, 3 * 10**7)]
    fitted = bench.fixed_cost_fit(points)
    assert fitted["fixed_seconds"] == pytest.approx(5.0)
    assert fitted["marginal_rows_per_second"] == pytest.approx(1e5)
    assert bench.fixed_cost_fit([(10**6, 15.0)]) is None  # one N: no line
    shrinking = bench.fixed_cost_fit([(10**6, 20.0), (10**7, 10.0)])
    assert shrinking["marginal_rows_per_second"] is None  # noise, not a rate


def test_memory_elasticity_reads_flat_and_proportional_growth(bench: ModuleType) -> None:
    assert bench.memory_elasticity([(10**6, 300.0), (10**7, 300.0)]) == pytest.approx(0.0)
    assert bench.memory_elasticity([(10**7, 3000.0), (10**6, 300.0)]) == pytest.approx(1.0)
    assert bench.memory_elasticity([(10**6, 300.0), (10**7, None)]) is None


def test_evaluation_seconds_come_from_the_result_then_the_epochs(bench: ModuleType) -> None:
    epochs = [{"eval_seconds": 1.5}, {"eval_seconds": 2.0}]
    assert bench.reported_eval_seconds(SimpleNamespace(eval_seconds=7.0, history=epochs)) == 7.0
    assert bench.reported_eval_seconds(SimpleNamespace(history=epochs)) == 3.5
    assert bench.reported_eval_seconds(SimpleNamespace(history=[{"loss": 0.5}])) is None


def test_ratio_is_none_when_a_side_is_missing(bench: ModuleType) -> None:
    assert bench.ratio(6.0, 3.0) == 2.0
    assert bench.ratio(None, 3.0) is None
    assert bench.ratio(6.0, 0.0) is None


def _training(
    workers: int, mf_vs_dense: tuple[float, float], mf_mib: float, ttnn_mib: float
) -> dict[str, Any]:
    """``mf_vs_dense``: against the plain dense loop and against it with the tuned allocator."""
    return {
        "workers": workers,
        "ingest": "stream",
        "mf_vs_dense": mf_vs_dense[0],
        "mf_vs_dense_tuned_allocator": mf_vs_dense[1],
        "mf": {"peak_worker_rss_mib": mf_mib},
        "ttnn": {"peak_worker_rss_mib": ttnn_mib},
    }


def _run(rows: int, split_ratio: float | None, training: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "rows": rows,
        "data_stages": [
            {"stage": "split", "rows": rows, "seconds": 10.0 + rows / 1e6},
            {"stage": "prepare", "rows": rows, "seconds": 1.0 + rows / 1e5},
        ],
        "ratios": {"split_vs_baseline": split_ratio},
        "training": training,
    }


def test_summary_reports_ratios_fixed_costs_and_goals(bench: ModuleType) -> None:
    runs = [
        _run(10**6, 0.6, [_training(1, (5.0, 4.2), 400.0, 500.0), {"workers": 2, "error": "boom"}]),
        _run(10**7, 0.4, [_training(1, (4.5, 3.9), 440.0, 500.0)]),
    ]
    summary = bench.summarize(runs)
    assert summary["split_vs_baseline"] == {"1000000": 0.6, "10000000": 0.4}
    assert summary["data_stage_fixed_cost"]["split"]["fixed_seconds"] == pytest.approx(10.0)
    assert summary["data_stage_fixed_cost"]["prepare"]["marginal_rows_per_second"] == (
        pytest.approx(1e5)
    )
    stream = summary["training"]["workers=1,ingest=stream"]
    assert stream["rows"] == [10**6, 10**7]
    assert stream["mf_vs_dense"] == [5.0, 4.5]
    assert stream["mf_vs_dense_tuned_allocator"] == [4.2, 3.9]
    assert stream["memory_elasticity"]["mf"] == pytest.approx(math.log10(1.1))
    assert stream["memory_elasticity"]["ttnn"] == pytest.approx(0.0)
    assert list(summary["training"]) == ["workers=1,ingest=stream"]  # the failed run left out
    assert summary["goals"] == {
        "split_at_least_half_of_baseline": False,  # 0.4 at 10^7
        "mf_at_least_4x_dense": True,
        "mf_at_least_4x_dense_tuned_allocator": False,  # 3.9 at 10^7
        "worker_memory_flat_in_rows": True,  # 10x rows, 1.1x memory
    }


def test_fixed_costs_are_fitted_per_engine(bench: ModuleType) -> None:
    """A stage that ran in-process at one N and through Ray Data at another gets no line
    through both; the same engine at both N gets its fit."""
    runs = []
    for rows, split_engine in ((10**6, "local"), (10**7, "ray")):
        run = _run(rows, 0.6, [])
        run["data_stages"][0]["engine"] = split_engine
        run["data_stages"].append(
            {"stage": "sample", "rows": rows, "seconds": 2.0 + rows / 1e7, "engine": "ray"}
        )
        runs.append(run)
    fits = bench.summarize(runs)["data_stage_fixed_cost"]
    assert fits["split (local)"] is None and fits["split (ray)"] is None
    assert "split" not in fits
    assert fits["sample (ray)"]["fixed_seconds"] == pytest.approx(2.0)
    assert fits["prepare"]["fixed_seconds"] == pytest.approx(1.0)  # no engine: as before


def test_summary_of_nothing_measured_has_no_verdicts(bench: ModuleType) -> None:
    summary = bench.summarize([_run(10**6, None, [{"workers": 1, "error": "boom"}])])
    assert set(summary["goals"].values()) == {None}
    assert summary["data_stage_fixed_cost"]["split"] is None  # one N


# ---------------------------------------------------------------------------------------
# The Ray-free parts on tiny synthetic data


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bench_scale")
    config = DataConfig(
        synthetic=SyntheticConfig(num_users=300, num_items=200, num_interactions=6000),
        prepared_dir=str(root / "prepared"),
    )
    return prepare_dataset(config, root)


def test_baseline_split_holds_out_two_rows_per_user(
    bench: ModuleType, prepared: Path, tmp_path: Path
) -> None:
    manifest = Manifest.load(prepared)
    counts = bench.baseline_split(prepared, tmp_path / "split")
    # Every synthetic user has >= 3 interactions: each gives one validation and one test row.
    assert counts["rows"] == manifest.num_interactions
    assert counts["train_rows"] == manifest.num_interactions - 2 * manifest.num_users
    assert pq.read_metadata(tmp_path / "split" / "train.parquet").num_rows == counts["train_rows"]
    for name in ("val", "test"):
        users = pq.read_table(tmp_path / "split" / f"{name}.parquet").column("user_id").to_numpy()
        np.testing.assert_array_equal(users, np.arange(manifest.num_users))
    known = open_known_index(tmp_path / "split" / "known", manifest.num_users, manifest.num_items)
    assert known.nnz == counts["train_rows"]  # synthetic users never repeat an item


def test_evaluated_users_are_limited_to_the_same_users_in_both_files(
    bench: ModuleType, prepared: Path, tmp_path: Path
) -> None:
    bench.baseline_split(prepared, tmp_path)
    split = SplitPaths(
        tmp_path, tmp_path / "train.parquet", tmp_path / "val.parquet", tmp_path / "test.parquet"
    )
    assert bench.limit_evaluated_users(split, 0) == 300  # 0: all kept
    assert bench.limit_evaluated_users(split, 50) == 50
    val = pq.read_table(split.val_path).column("user_id").to_numpy()
    test = pq.read_table(split.test_path).column("user_id").to_numpy()
    np.testing.assert_array_equal(val, test)
    assert val.size == 50 and val[0] == 0 and val[-1] == 299  # spread over all users
    assert bench.limit_evaluated_users(split, 100) == 50  # already within the bound


def test_streamed_bytes_are_the_streamed_columns_arrow_width_times_the_rows(
    bench: ModuleType, prepared: Path, tmp_path: Path
) -> None:
    counts = bench.baseline_split(prepared, tmp_path / "split")
    train = tmp_path / "split" / "train.parquet"
    folder = tmp_path / "train"
    folder.mkdir()
    table = pq.read_table(train)
    # Two files and an unstreamed column: only user_id and item_id count, 8 bytes each.
    half = table.num_rows // 2
    pq.write_table(table.slice(0, half), folder / "part-0.parquet")
    pq.write_table(table.slice(half), folder / "part-1.parquet")
    assert {"user_id", "item_id", "row_index", "timestamp"} <= set(table.column_names)
    assert bench.streamed_bytes(folder) == counts["train_rows"] * 16


def test_store_counters_delta_grows_by_the_spill_and_keeps_the_fallback_level(
    bench: ModuleType,
) -> None:
    before = {"spilled_bytes": 100, "restored_bytes": 40, "fallback_bytes": 7}
    after = {"spilled_bytes": 350, "restored_bytes": 40, "fallback_bytes": 0}
    assert bench.counters_delta(before, after) == {
        "spilled_bytes": 250,
        "restored_bytes": 0,
        "fallback_bytes_after": 0,
    }
    assert bench.counters_delta(None, after) is None
    assert bench.counters_delta(before, None) is None
