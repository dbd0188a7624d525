"""Model size in the sweep outputs: the model_bytes column and the quality-vs-bytes plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cadc_ray.config import ExperimentConfig
from cadc_ray.sweep.report import (
    make_record,
    plot_quality_vs_model_bytes,
    quality_size_front,
    results_table,
)


def _record(trial_id: str, kind: str, hr: float, size: int) -> dict[str, Any]:
    metrics = {
        "val_hr@10": hr,
        "test_hr@10": hr,
        "model_bytes": size,
        "id_table_compression": 1e6 / size,
    }
    overrides = {"method": "random", "model.id_table.default.kind": kind}
    return make_record(
        trial_id=trial_id,
        overrides=overrides,
        base=ExperimentConfig(),
        metrics=metrics,
        error=None,
    )


RECORDS = [
    _record("a", "full", 0.30, 1_000_000),
    _record("b", "hashing", 0.20, 100_000),
    _record("c", "hashing", 0.10, 200_000),  # dominated by b: smaller and better
]


def test_results_table_carries_model_bytes_and_compression() -> None:
    columns, rows = results_table(RECORDS, (10,))
    assert {"model_bytes", "id_table_compression", "model.id_table.default.kind"} <= set(columns)
    by_trial = {row["trial_id"]: row for row in rows}
    assert by_trial["b"]["model_bytes"] == 100_000
    assert by_trial["b"]["id_table_compression"] == 10.0
    assert by_trial["b"]["model.id_table.default.kind"] == "hashing"


def test_front_keeps_the_undominated_sizes() -> None:
    assert quality_size_front(RECORDS) == ["a", "b"]


def test_front_is_chosen_on_validation_not_test() -> None:
    # c now validates best of the small models but tests worst: the front follows validation.
    record = _record("c", "hashing", 0.25, 200_000)
    record["metrics"]["test_hr@10"] = 0.01
    assert set(quality_size_front([*RECORDS[:2], record])) == {"a", "b", "c"}
    assert quality_size_front(
        [*RECORDS[:2], {**record, "metrics": {**record["metrics"], "val_hr@10": 0.1}}]
    ) == ["a", "b"]


def test_quality_vs_model_bytes_plot_is_written(tmp_path: Path) -> None:
    path = tmp_path / "plots" / "quality_vs_model_bytes.png"
    assert plot_quality_vs_model_bytes(RECORDS, path)
    assert path.stat().st_size > 1000
    # No finished trial with a size: nothing to draw, no file.
    empty = tmp_path / "empty.png"
    assert not plot_quality_vs_model_bytes([{**RECORDS[0], "status": "error"}], empty)
    assert not empty.exists()
