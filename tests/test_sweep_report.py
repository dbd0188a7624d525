"""Sweep outputs from hand-made trial records: table rows, best trial, Pareto front, plots."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

import pytest

from cadc_ray.sweep.driver import SweepOutcome
from cadc_ray.sweep.report import (
    best_record,
    make_record,
    pareto_front,
    peak_concurrency,
    plot_quality_vs_ratio,
    results_table,
    to_csv,
    to_markdown,
    write_reports,
)
from cadc_ray.sweep.spec import Objective, parse_spec

SPEC = parse_spec(
    {
        "name": "ratio-test",
        "base_config": {"pretrain": {"embedding_dim": 7}, "model": {"embedding_dim": 8}},
        "space": {
            "method": {"type": "grid", "values": ["cadc", "random"]},
            "data.filter_ratio": {"type": "grid", "values": [2, 10]},
        },
        "extra_trials": [{"method": "gs"}],
        "searcher": {"type": "grid"},
        "objectives": [
            {"metric": "val_hr@10", "mode": "max"},
            {"metric": "total_seconds", "mode": "min"},
        ],
    },
    "ratio-test.yaml",
)


def _record(
    trial_id: str, overrides: dict[str, Any], hr: float | None, seconds: float, **extra: Any
) -> dict[str, Any]:
    metrics: dict[str, Any] = {
        "val_hr@10": 0.5 if hr is None else hr + 0.01,
        "val_ndcg@10": 0.2,
        "train_seconds": seconds - 1.0,
        "pretrain_seconds": 1.0,
        "total_seconds": seconds,
        "trainable_parameters": 100,
        "frozen_parameters": 50,
        **extra,
    }
    if hr is not None:
        metrics.update({"test_hr@10": hr, "test_ndcg@10": hr / 2})
    return make_record(
        trial_id=trial_id, overrides=overrides, base=SPEC.base_config, metrics=metrics, error=None
    )


RECORDS = [
    _record("t5", {"method": "gs", "data.filter_ratio": 1.0}, 0.30, 50.0),
    _record("t1", {"method": "random", "data.filter_ratio": 10.0}, 0.10, 5.0),
    _record("t0", {"method": "cadc", "data.filter_ratio": 10.0}, 0.25, 8.0),
    _record("t2", {"method": "cadc", "data.filter_ratio": 2.0}, 0.28, 12.0),
    _record("t3", {"method": "random", "data.filter_ratio": 2.0}, 0.20, 9.0),
    _record("t4", {"method": "random", "data.filter_ratio": 5.0}, None, 3.0, done=True),  # ASHA
]


def test_rows_are_sorted_by_method_and_ratio_with_percent_quality() -> None:
    columns, rows = results_table(RECORDS, (10,))
    assert [(row["method"], row["filter_ratio"]) for row in rows] == [
        ("cadc", 2.0),
        ("cadc", 10.0),
        ("random", 2.0),
        ("random", 5.0),
        ("random", 10.0),
        ("gs", 1.0),
    ]
    cadc_at_10 = rows[1]
    assert cadc_at_10["test_hr@10_pct"] == pytest.approx(25.0)
    assert cadc_at_10["test_ndcg@10_pct"] == pytest.approx(12.5)
    assert cadc_at_10["integration"] == "init_frz" and cadc_at_10["pretrain_embedding_dim"] == 7
    assert rows[2]["integration"] == "none" and rows[2]["pretrain_embedding_dim"] is None
    stopped = rows[3]
    assert stopped["status"] == "stopped" and stopped["test_hr@10_pct"] is None
    parsed = list(csv.DictReader(io.StringIO(to_csv(columns, rows))))
    assert parsed[3]["test_hr@10_pct"] == "" and parsed[0]["total_seconds"] == "12.0"
    markdown = to_markdown(columns, rows, "ratio-test")
    assert "test_hr@10 (%)" in markdown and "| 25.00 |" in markdown
    assert markdown.count("\n| ") == 1 + len(rows)  # header + rows (separator starts with |-)


def test_best_trial_and_pareto_front() -> None:
    assert best_record(RECORDS, Objective("test_hr@10", "max"))["trial_id"] == "t5"  # type: ignore[index]
    assert best_record(RECORDS, Objective("total_seconds", "min"))["trial_id"] == "t1"  # type: ignore[index]
    # Non-dominated in (hr max, seconds min): t1 (0.10, 5), t0 (0.25, 8), t2 (0.28, 12),
    # t5 (0.30, 50); t3 (0.20, 9) is dominated by t0; t4 has no test metric.
    front = pareto_front(
        RECORDS, [Objective("test_hr@10", "max"), Objective("total_seconds", "min")]
    )
    assert front == ["t0", "t1", "t2", "t5"]


def test_peak_concurrency_from_trial_intervals() -> None:
    timed = [
        _record("a", {"method": "random"}, 0.1, 1.0, trial_started_at=0.0, trial_finished_at=10.0),
        _record("b", {"method": "random"}, 0.1, 1.0, trial_started_at=5.0, trial_finished_at=12.0),
        _record("c", {"method": "random"}, 0.1, 1.0, trial_started_at=12.0, trial_finished_at=20.0),
    ]
    assert peak_concurrency(timed) == 2  # b ends at 12 when c starts: not counted twice
    assert peak_concurrency(timed[:1]) == 1


def test_ratio_plot_needs_two_ratios(tmp_path: Path) -> None:
    assert not plot_quality_vs_ratio(RECORDS[:3], tmp_path / "one.png")
    assert not (tmp_path / "one.png").exists()
    assert plot_quality_vs_ratio(RECORDS, tmp_path / "figure1.png")
    assert (tmp_path / "figure1.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_write_reports_writes_every_file_atomically(tmp_path: Path) -> None:
    outcome = SweepOutcome(
        output_dir=tmp_path, records=RECORDS, pretrain_runs=["mf-d7-x"], wall_seconds=12.5
    )
    files = write_reports(SPEC, outcome)
    assert set(files) == {
        "results_csv",
        "results_md",
        "best_config",
        "best_json",
        "plot_ratio",
        "plot_time",
        "pareto_md",
        "plot_pareto",
        "summary",
    }
    best = json.loads((tmp_path / "best.json").read_text())
    assert best["selected_by"] == {"metric": "val_hr@10", "mode": "max"}
    assert best["best"]["trial_id"] == "t5" and best["pareto_front"] == ["t0", "t1", "t2", "t5"]
    assert all(math.isfinite(v) for v in best["best"]["metrics"].values() if isinstance(v, float))
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert (summary["finished"], summary["stopped"], summary["errors"]) == (5, 1, 0)
    interrupted = _record("t6", {"method": "random"}, None, 3.0)  # no result marked done
    assert interrupted["status"] == "incomplete"
    assert not list(tmp_path.rglob(".*tmp*"))  # no temporary files left behind
    from cadc_ray.config import load_config

    best_config = load_config(tmp_path / "best_config.yaml")  # runnable with cadc_ray.run
    assert best_config.method == "gs" and best_config.name == "ratio-test-best"


def test_epoch_results_carry_every_sweep_metric() -> None:
    from cadc_ray.sweep.callbacks import epoch_result

    names = ("val_hr@10", "test_hr@10", "total_seconds")
    result = epoch_result({"val_hr@10": 0.2, "epoch": 3}, names, pretrain_seconds=4.0)
    assert result["val_hr@10"] == 0.2 and result["epoch"] == 3  # real values kept
    assert math.isnan(result["test_hr@10"]) and math.isnan(result["total_seconds"])
    assert result["pretrain_seconds"] == 4.0
